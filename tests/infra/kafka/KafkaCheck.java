// An independent view of what Kafka holds, for Ratify's tests: plain Apache Kafka Java
// clients (not librdkafka, not the adapter's code), compiled by tests/infra/kafka.sh.
//
//   java -cp <classes>:<libs>/* KafkaCheck ready  <bootstrap>
//   java -cp ... KafkaCheck create <bootstrap> <topic> <partitions> [compact]
//   java -cp ... KafkaCheck read   <bootstrap> <topic>
//   java -cp ... KafkaCheck offsets <bootstrap> <group>
//   java -cp ... KafkaCheck open    <bootstrap> <topic>
//
// `read` consumes the whole topic with isolation.level=read_committed, from the
// beginning to the end offsets (the last stable offsets) taken at start, and prints
// one JSON object: {"topic":..., "records":[{"partition","offset","key","value",
// "headers":{...}}]} (keys, values and header values as UTF-8 strings or null).
// `offsets` prints {"<topic>/<partition>": offset, ...} of the group's committed
// offsets. `open` prints {"<topic>/<partition>": n, ...} where n is the high watermark
// minus the last stable offset: 0 everywhere means no transaction is open on the
// topic. Every failure exits non-zero with the reason on stderr.

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.*;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.common.*;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public final class KafkaCheck {
    private static final Duration TIMEOUT = Duration.ofSeconds(30);

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            usage();
        }
        String cmd = args[0], bootstrap = args[1];
        switch (cmd) {
            case "ready" -> ready(bootstrap);
            case "create" -> {
                if (args.length < 4) usage();
                create(bootstrap, args[2], Integer.parseInt(args[3]),
                        args.length > 4 && args[4].equals("compact"));
            }
            case "read" -> {
                if (args.length < 3) usage();
                read(bootstrap, args[2]);
            }
            case "offsets" -> {
                if (args.length < 3) usage();
                offsets(bootstrap, args[2]);
            }
            case "open" -> {
                if (args.length < 3) usage();
                open(bootstrap, args[2]);
            }
            default -> usage();
        }
    }

    private static void usage() {
        System.err.println("usage: KafkaCheck ready|create|read|offsets|open <bootstrap> [args]");
        System.exit(2);
    }

    private static Admin admin(String bootstrap) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "10000");
        return Admin.create(p);
    }

    /** Exits 0 once the broker answers a metadata request and has a controller. */
    private static void ready(String bootstrap) throws Exception {
        try (Admin a = admin(bootstrap)) {
            DescribeClusterResult r = a.describeCluster();
            if (r.nodes().get().isEmpty() || r.controller().get() == null) {
                System.err.println("cluster has no nodes or no controller yet");
                System.exit(1);
            }
        }
    }

    private static void create(String bootstrap, String topic, int partitions, boolean compact)
            throws Exception {
        try (Admin a = admin(bootstrap)) {
            NewTopic t = new NewTopic(topic, partitions, (short) 1);
            if (compact) {
                t.configs(Map.of("cleanup.policy", "compact"));
            }
            try {
                a.createTopics(List.of(t)).all().get();
            } catch (ExecutionException e) {
                if (!(e.getCause() instanceof TopicExistsException)) {
                    throw e;
                }
            }
        }
    }

    private static void read(String bootstrap, String topic) {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        StringBuilder out = new StringBuilder();
        out.append("{\"topic\":").append(json(topic)).append(",\"records\":[");
        try (KafkaConsumer<byte[], byte[]> c = new KafkaConsumer<>(p)) {
            List<TopicPartition> tps = new ArrayList<>();
            for (PartitionInfo pi : c.partitionsFor(topic, TIMEOUT)) {
                tps.add(new TopicPartition(topic, pi.partition()));
            }
            if (tps.isEmpty()) {
                System.err.println("topic " + topic + " does not exist");
                System.exit(1);
            }
            c.assign(tps);
            c.seekToBeginning(tps);
            // With read_committed these are the last stable offsets.
            Map<TopicPartition, Long> end = c.endOffsets(tps, TIMEOUT);
            long deadline = System.nanoTime() + TIMEOUT.toNanos();
            boolean first = true;
            while (!reached(c, end)) {
                if (System.nanoTime() > deadline) {
                    System.err.println("timed out reading " + topic + " up to " + end);
                    System.exit(1);
                }
                for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(200))) {
                    if (r.offset() >= end.get(new TopicPartition(r.topic(), r.partition()))) {
                        continue;
                    }
                    if (!first) out.append(',');
                    first = false;
                    out.append("{\"partition\":").append(r.partition())
                       .append(",\"offset\":").append(r.offset())
                       .append(",\"key\":").append(json(r.key()))
                       .append(",\"value\":").append(json(r.value()))
                       .append(",\"headers\":{");
                    boolean firstHeader = true;
                    for (Header h : r.headers()) {
                        if (!firstHeader) out.append(',');
                        firstHeader = false;
                        out.append(json(h.key())).append(':').append(json(h.value()));
                    }
                    out.append("}}");
                }
            }
        }
        out.append("]}");
        System.out.println(out);
    }

    private static boolean reached(KafkaConsumer<?, ?> c, Map<TopicPartition, Long> end) {
        for (Map.Entry<TopicPartition, Long> e : end.entrySet()) {
            if (c.position(e.getKey(), TIMEOUT) < e.getValue()) {
                return false;
            }
        }
        return true;
    }

    private static void offsets(String bootstrap, String group) throws Exception {
        try (Admin a = admin(bootstrap)) {
            Map<TopicPartition, OffsetAndMetadata> m =
                    a.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get();
            // TopicPartition is not Comparable: sort by the printed name.
            TreeMap<String, Long> sorted = new TreeMap<>();
            for (Map.Entry<TopicPartition, OffsetAndMetadata> e : m.entrySet()) {
                if (e.getValue() != null) {
                    sorted.put(e.getKey().topic() + "/" + e.getKey().partition(),
                            e.getValue().offset());
                }
            }
            StringBuilder out = new StringBuilder("{");
            boolean first = true;
            for (Map.Entry<String, Long> e : sorted.entrySet()) {
                if (!first) out.append(',');
                first = false;
                out.append(json(e.getKey())).append(':').append(e.getValue());
            }
            System.out.println(out.append('}'));
        }
    }

    private static void open(String bootstrap, String topic) throws Exception {
        try (Admin a = admin(bootstrap)) {
            TopicDescription d = a.describeTopics(List.of(topic)).allTopicNames().get().get(topic);
            Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
            for (TopicPartitionInfo pi : d.partitions()) {
                latest.put(new TopicPartition(topic, pi.partition()), OffsetSpec.latest());
            }
            var hw = a.listOffsets(latest,
                    new ListOffsetsOptions(IsolationLevel.READ_UNCOMMITTED)).all().get();
            var lso = a.listOffsets(latest,
                    new ListOffsetsOptions(IsolationLevel.READ_COMMITTED)).all().get();
            TreeMap<String, Long> sorted = new TreeMap<>();
            for (TopicPartition tp : latest.keySet()) {
                sorted.put(tp.topic() + "/" + tp.partition(),
                        hw.get(tp).offset() - lso.get(tp).offset());
            }
            StringBuilder out = new StringBuilder("{");
            boolean first = true;
            for (Map.Entry<String, Long> e : sorted.entrySet()) {
                if (!first) out.append(',');
                first = false;
                out.append(json(e.getKey())).append(':').append(e.getValue());
            }
            System.out.println(out.append('}'));
        }
    }

    private static String json(byte[] b) {
        return b == null ? "null" : json(new String(b, StandardCharsets.UTF_8));
    }

    private static String json(String s) {
        StringBuilder o = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            switch (ch) {
                case '"' -> o.append("\\\"");
                case '\\' -> o.append("\\\\");
                case '\n' -> o.append("\\n");
                case '\r' -> o.append("\\r");
                case '\t' -> o.append("\\t");
                default -> {
                    if (ch < 0x20) o.append(String.format("\\u%04x", (int) ch));
                    else o.append(ch);
                }
            }
        }
        return o.append('"').toString();
    }
}
