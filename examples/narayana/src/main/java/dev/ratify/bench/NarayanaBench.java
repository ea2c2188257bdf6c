package dev.ratify.bench;

import com.arjuna.ats.arjuna.common.CoordinatorEnvironmentBean;
import com.arjuna.ats.arjuna.common.ObjectStoreEnvironmentBean;
import com.arjuna.ats.arjuna.common.arjPropertyManager;
import com.arjuna.common.internal.util.propertyservice.BeanPopulator;
import jakarta.transaction.Status;
import jakarta.transaction.Transaction;
import jakarta.transaction.TransactionManager;
import java.io.File;
import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.atomic.AtomicLong;
import java.util.logging.Level;
import java.util.logging.Logger;
import javax.sql.XAConnection;
import javax.transaction.xa.XAException;
import javax.transaction.xa.XAResource;
import javax.transaction.xa.Xid;
import org.postgresql.xa.PGXADataSource;

/**
 * The `pg_bank bench` transfer driven by Narayana JTA: every client thread debits an account
 * of bank A and credits one of bank B in one JTA transaction, enlisting one pgjdbc XA
 * connection per bank, so Narayana runs a real two-phase commit (prepare A, prepare B, write
 * and fsync its commit record, commit A, commit B, delete the record).
 *
 * <p>Prints one line per round on stdout, for `pg_bank bench` to parse:
 *
 * <pre>
 * NARAYANA_CONFIG version=7.3.4.Final store=...ShadowNoFileLockStore object_store_sync=true ...
 * NARAYANA clients=16 done=8000 failed=0 secs=5.001 p50_ms=1.92 p99_ms=4.10 prepares=16000 one_phase=0
 * </pre>
 *
 * <p>Usage: {@code java -jar narayana-bench.jar --a URL --b URL --clients 1,16 --secs 5
 * --per-client 100 --store DIR [--warmup-secs 1]}. URLs are {@code postgres://user:pw@host:port/db}
 * (what the Rust bench uses) or {@code jdbc:postgresql://...}.
 */
public final class NarayanaBench {
    /** Keeps the JUL loggers we quieten alive (JUL holds them weakly). */
    private static final List<Logger> QUIET = new ArrayList<>();

    /** Prepare calls that reached a database during the current round. */
    static final AtomicLong PREPARES = new AtomicLong();

    /** One-phase commits during the current round (must stay 0: the transfer is 2PC). */
    static final AtomicLong ONE_PHASE = new AtomicLong();

    private NarayanaBench() {}

    /** Entry point; exits 2 on bad arguments, 1 on a setup failure. */
    public static void main(String[] argv) {
        Map<String, String> args;
        try {
            args = parseArgs(argv);
        } catch (IllegalArgumentException e) {
            System.err.println("narayana-bench: " + e.getMessage());
            System.err.println(
                    "usage: --a URL --b URL --clients 1,16 --secs 5 --per-client N --store DIR"
                            + " [--warmup-secs 1]");
            System.exit(2);
            return;
        }
        try {
            run(args);
            System.exit(0);
        } catch (Exception e) {
            System.err.println("narayana-bench: " + e);
            e.printStackTrace();
            System.exit(1);
        }
    }

    private static Map<String, String> parseArgs(String[] argv) {
        Map<String, String> m = new HashMap<>();
        m.put("warmup-secs", "1");
        for (int i = 0; i < argv.length; i++) {
            if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
                throw new IllegalArgumentException("bad argument " + argv[i]);
            }
            m.put(argv[i].substring(2), argv[++i]);
        }
        for (String k : List.of("a", "b", "clients", "secs", "per-client", "store")) {
            if (!m.containsKey(k)) {
                throw new IllegalArgumentException("missing --" + k);
            }
        }
        return m;
    }

    private static void run(Map<String, String> args) throws Exception {
        int[] clientCounts =
                Arrays.stream(args.get("clients").split(","))
                        .map(String::trim)
                        .mapToInt(Integer::parseInt)
                        .toArray();
        double secs = Double.parseDouble(args.get("secs"));
        double warmupSecs = Double.parseDouble(args.get("warmup-secs"));
        int perClient = Integer.parseInt(args.get("per-client"));
        if (perClient < 1 || secs <= 0 || Arrays.stream(clientCounts).anyMatch(c -> c < 1)) {
            throw new IllegalArgumentException("--per-client, --secs and --clients must be positive");
        }
        int maxClients = Arrays.stream(clientCounts).max().orElse(1);

        TransactionManager tm = configureNarayana(new File(args.get("store")));
        PGXADataSource dsA = dataSource(args.get("a"));
        PGXADataSource dsB = dataSource(args.get("b"));

        // One XA connection per client per database, opened once and reused by every round.
        List<Client> clients = new ArrayList<>();
        for (int i = 0; i < maxClients; i++) {
            clients.add(new Client(i, perClient, tm, dsA.getXAConnection(), dsB.getXAConnection()));
        }
        Client first = clients.get(0);
        boolean sameRm = first.resA.isSameRM(first.resB);
        ObjectStoreEnvironmentBean os = arjPropertyManager.getObjectStoreEnvironmentBean();
        CoordinatorEnvironmentBean co = arjPropertyManager.getCoordinatorEnvironmentBean();
        System.out.printf(
                Locale.ROOT,
                "NARAYANA_CONFIG version=%s store=%s object_store_sync=%b transaction_sync=%b"
                        + " async_prepare=%b async_commit=%b same_rm=%b dir=%s%n",
                narayanaVersion(),
                os.getObjectStoreType(),
                os.isObjectStoreSync(),
                os.isTransactionSync(),
                co.isAsyncPrepare(),
                co.isAsyncCommit(),
                sameRm,
                os.getObjectStoreDir());
        System.out.flush();
        if (sameRm) {
            throw new IllegalStateException(
                    "the two databases' XA resources claim to be the same RM: no 2PC to measure");
        }

        // Warm-up (JIT, connections, the object store's folders), as the Rust bench does.
        if (warmupSecs > 0) {
            round(clients, Math.min(4, maxClients), warmupSecs);
        }
        for (int n : clientCounts) {
            Result r = round(clients, n, secs);
            System.out.printf(
                    Locale.ROOT,
                    "NARAYANA clients=%d done=%d failed=%d secs=%.3f p50_ms=%.3f p99_ms=%.3f"
                            + " prepares=%d one_phase=%d%n",
                    n,
                    r.done,
                    r.failed,
                    r.elapsedSecs,
                    percentileMs(r.latencies, 50.0),
                    percentileMs(r.latencies, 99.0),
                    r.prepares,
                    r.onePhase);
            System.out.flush();
        }
        for (Client c : clients) {
            c.close();
        }
    }

    /**
     * Narayana's defaults, made explicit: the file object store (ShadowNoFileLockStore) in
     * {@code dir}, every write of it fsynced (objectStoreSync, transactionSync), one-phase
     * commit allowed (it must not happen here: two resource managers), prepare and commit
     * run one branch after another.
     */
    private static TransactionManager configureNarayana(File dir) throws Exception {
        for (String name : List.of("com.arjuna", "org.jboss")) {
            Logger l = Logger.getLogger(name);
            l.setLevel(Level.WARNING);
            QUIET.add(l);
        }
        String store = com.arjuna.ats.internal.arjuna.objectstore.ShadowNoFileLockStore.class.getName();
        // The default store, and the two named ones Narayana keeps beside it.
        for (String instance : new String[] {null, "communicationStore", "stateStore"}) {
            ObjectStoreEnvironmentBean b =
                    instance == null
                            ? BeanPopulator.getDefaultInstance(ObjectStoreEnvironmentBean.class)
                            : BeanPopulator.getNamedInstance(ObjectStoreEnvironmentBean.class, instance);
            b.setObjectStoreDir(dir.getAbsolutePath());
            b.setObjectStoreType(store);
            b.setObjectStoreSync(true);
            b.setTransactionSync(true);
        }
        arjPropertyManager.getCoreEnvironmentBean().setNodeIdentifier("ratify-bench");
        CoordinatorEnvironmentBean co = arjPropertyManager.getCoordinatorEnvironmentBean();
        co.setCommitOnePhase(true);
        co.setAsyncPrepare(false);
        co.setAsyncCommit(false);
        TransactionManager tm = com.arjuna.ats.jta.TransactionManager.transactionManager();
        tm.setTransactionTimeout(10); // Ratify's transfers use a 10 s timeout too.
        return tm;
    }

    /** Narayana's version from its jar's manifest ("7.3.4.Final"), or "unknown". */
    static String narayanaVersion() {
        String v = com.arjuna.ats.jta.TransactionManager.class.getPackage().getImplementationVersion();
        return v == null || v.isBlank() ? "unknown" : v.trim().split("\\s+")[0];
    }

    /** pgjdbc's XA data source for a postgres:// or jdbc:postgresql:// URL. */
    static PGXADataSource dataSource(String url) throws Exception {
        PGXADataSource ds = new PGXADataSource();
        if (url.startsWith("jdbc:")) {
            ds.setUrl(url);
            return ds;
        }
        URI u = new URI(url);
        if (!"postgres".equals(u.getScheme()) && !"postgresql".equals(u.getScheme())) {
            throw new IllegalArgumentException("not a postgres:// URL: " + url);
        }
        String host = u.getHost() == null ? "localhost" : u.getHost();
        int port = u.getPort() < 0 ? 5432 : u.getPort();
        String db = u.getPath() == null || u.getPath().length() <= 1 ? "postgres" : u.getPath().substring(1);
        String jdbc = "jdbc:postgresql://" + host + ":" + port + "/" + db;
        if (u.getRawQuery() != null) {
            jdbc += "?" + u.getRawQuery();
        }
        ds.setUrl(jdbc);
        if (u.getRawUserInfo() != null) {
            String[] up = u.getRawUserInfo().split(":", 2);
            ds.setUser(URLDecoder.decode(up[0], StandardCharsets.UTF_8));
            if (up.length == 2) {
                ds.setPassword(URLDecoder.decode(up[1], StandardCharsets.UTF_8));
            }
        }
        return ds;
    }

    /** Runs clients 0..n-1 for {@code secs} seconds. */
    private static Result round(List<Client> clients, int n, double secs) throws Exception {
        PREPARES.set(0);
        ONE_PHASE.set(0);
        CountDownLatch go = new CountDownLatch(1);
        List<Thread> threads = new ArrayList<>();
        long[] deadline = new long[1];
        for (int i = 0; i < n; i++) {
            Client c = clients.get(i);
            Thread t =
                    new Thread(
                            () -> {
                                try {
                                    go.await();
                                    c.loop(deadline[0]);
                                } catch (InterruptedException e) {
                                    Thread.currentThread().interrupt();
                                }
                            },
                            "client-" + i);
            threads.add(t);
            t.start();
        }
        long start = System.nanoTime();
        deadline[0] = start + (long) (secs * 1e9);
        go.countDown();
        for (Thread t : threads) {
            t.join();
        }
        Result r = new Result();
        r.elapsedSecs = (System.nanoTime() - start) / 1e9;
        long total = 0;
        for (int i = 0; i < n; i++) {
            total += clients.get(i).count;
        }
        r.latencies = new long[(int) total];
        int at = 0;
        for (int i = 0; i < n; i++) {
            Client c = clients.get(i);
            System.arraycopy(c.latencies, 0, r.latencies, at, c.count);
            at += c.count;
            r.done += c.count;
            r.failed += c.failed;
        }
        r.prepares = PREPARES.get();
        r.onePhase = ONE_PHASE.get();
        return r;
    }

    /** Same rank rule as the Rust bench's Latencies::percentile_ms. */
    static double percentileMs(long[] nanos, double p) {
        if (nanos.length == 0) {
            return 0.0;
        }
        Arrays.sort(nanos);
        int last = nanos.length - 1;
        int rank = (int) Math.round(p / 100.0 * last);
        return nanos[Math.min(rank, last)] / 1e6;
    }

    /** What one round measured. */
    static final class Result {
        long done;
        long failed;
        double elapsedSecs;
        long[] latencies;
        long prepares;
        long onePhase;
    }

    /** One client: its partition of accounts and its two XA connections. */
    static final class Client {
        final int base;
        final int perClient;
        final TransactionManager tm;
        final XAConnection xaA;
        final XAConnection xaB;
        final XAResource resA;
        final XAResource resB;
        final PreparedStatement debit;
        final PreparedStatement credit;
        long[] latencies = new long[1024];
        int count;
        long failed;
        int errorsShown;

        Client(int i, int perClient, TransactionManager tm, XAConnection xaA, XAConnection xaB)
                throws Exception {
            this.base = i * perClient;
            this.perClient = perClient;
            this.tm = tm;
            this.xaA = xaA;
            this.xaB = xaB;
            this.resA = new CountingXAResource(xaA.getXAResource());
            this.resB = new CountingXAResource(xaB.getXAResource());
            Connection a = xaA.getConnection();
            Connection b = xaB.getConnection();
            this.debit = a.prepareStatement("UPDATE accounts SET balance = balance - ? WHERE id = ?");
            this.credit = b.prepareStatement("UPDATE accounts SET balance = balance + ? WHERE id = ?");
        }

        /** Transfers until {@code deadline} (System.nanoTime). */
        void loop(long deadline) {
            count = 0;
            failed = 0;
            errorsShown = 0;
            ThreadLocalRandom rng = ThreadLocalRandom.current();
            while (System.nanoTime() < deadline) {
                // As pick() in bench.rs: two accounts of this client's partition, 1..=10.
                int from = base + rng.nextInt(perClient);
                int to = base + rng.nextInt(perClient);
                long amount = 1 + rng.nextInt(10);
                long t = System.nanoTime();
                try {
                    transfer(from, to, amount);
                    if (count == latencies.length) {
                        latencies = Arrays.copyOf(latencies, count * 2);
                    }
                    latencies[count++] = System.nanoTime() - t;
                } catch (Exception e) {
                    failed++;
                    if (errorsShown++ < 3) {
                        System.err.println("narayana-bench: transfer failed: " + e);
                    }
                    try {
                        if (tm.getStatus() != Status.STATUS_NO_TRANSACTION) {
                            tm.rollback();
                        }
                    } catch (Exception ignored) {
                        // Rolled back already, or nothing to roll back.
                    }
                }
            }
        }

        private void transfer(int from, int to, long amount) throws Exception {
            tm.begin();
            Transaction tx = tm.getTransaction();
            if (!tx.enlistResource(resA) || !tx.enlistResource(resB)) {
                throw new IllegalStateException("enlistResource refused");
            }
            debit.setLong(1, amount);
            debit.setInt(2, from);
            credit.setLong(1, amount);
            credit.setInt(2, to);
            if (debit.executeUpdate() != 1 || credit.executeUpdate() != 1) {
                throw new IllegalStateException("account missing");
            }
            tm.commit();
        }

        void close() {
            try {
                xaA.close();
                xaB.close();
            } catch (Exception ignored) {
                // Exiting anyway.
            }
        }
    }

    /**
     * Passes every call to pgjdbc's XAResource and counts prepares and one-phase commits, so
     * each round shows that Narayana ran two-phase commit (two prepares per transfer).
     */
    static final class CountingXAResource implements XAResource {
        final XAResource inner;

        CountingXAResource(XAResource inner) {
            this.inner = inner;
        }

        @Override
        public int prepare(Xid xid) throws XAException {
            PREPARES.incrementAndGet();
            return inner.prepare(xid);
        }

        @Override
        public void commit(Xid xid, boolean onePhase) throws XAException {
            if (onePhase) {
                ONE_PHASE.incrementAndGet();
            }
            inner.commit(xid, onePhase);
        }

        @Override
        public boolean isSameRM(XAResource other) throws XAException {
            return inner.isSameRM(other instanceof CountingXAResource c ? c.inner : other);
        }

        @Override
        public void start(Xid xid, int flags) throws XAException {
            inner.start(xid, flags);
        }

        @Override
        public void end(Xid xid, int flags) throws XAException {
            inner.end(xid, flags);
        }

        @Override
        public void rollback(Xid xid) throws XAException {
            inner.rollback(xid);
        }

        @Override
        public void forget(Xid xid) throws XAException {
            inner.forget(xid);
        }

        @Override
        public Xid[] recover(int flag) throws XAException {
            return inner.recover(flag);
        }

        @Override
        public int getTransactionTimeout() throws XAException {
            return inner.getTransactionTimeout();
        }

        @Override
        public boolean setTransactionTimeout(int seconds) throws XAException {
            return inner.setTransactionTimeout(seconds);
        }
    }
}
