// Ratify web console: reads /api/v1/console every REFRESH_MS and updates the page in
// place. Every string from the document is inserted as text (textContent, text nodes,
// setAttribute on inert attributes), never parsed as markup: gtrids, endpoints, labels
// and errors come from the network.
"use strict";
(function () {
  const REFRESH_MS = 1500;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);

  function append(parent, child) {
    if (child === null || child === undefined) return;
    if (Array.isArray(child)) {
      child.forEach((c) => append(parent, c));
    } else if (child instanceof Node) {
      parent.appendChild(child);
    } else {
      parent.appendChild(document.createTextNode(String(child)));
    }
  }

  // el("td", {class: "x"}, "text", otherNode, ...): attributes are set as data.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else e.setAttribute(k, String(v));
    }
    append(e, children);
    return e;
  }

  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    append(e, children);
    return e;
  }

  function setText(id, v) {
    $(id).textContent = v === null || v === undefined ? "–" : String(v);
  }

  function rows(tbody, list, cols, emptyText) {
    tbody.replaceChildren(
      ...(list.length ? list : [el("tr", { class: "empty" }, el("td", { colspan: cols }, emptyText))])
    );
  }

  function age(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 1000) return ms + " ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function stateBadge(state) {
    return el("span", { class: "badge st-" + String(state).toLowerCase() }, state);
  }

  function gtridCell(gtrid) {
    return el("td", { class: "gtrid", "data-gtrid": gtrid }, gtrid);
  }

  const WHY = {
    heuristic: "heuristic outcome",
    failing_calls: "calls failing",
    phase2_overdue: "phase 2 overdue",
  };

  function branchList(branches) {
    return el(
      "ul",
      { class: "branches" },
      branches.map((b) => {
        const parts = [
          el("span", { class: "bqual" }, b.bqual),
          " ",
          el("span", { class: "endpoint" }, b.endpoint + "/" + b.resource),
          " ",
          el("span", { class: "bstatus s-" + b.status }, b.status.replace(/_/g, " ")),
        ];
        if (b.failed_calls > 0) {
          parts.push(
            " ",
            el("span", { class: "failing" }, "failing ×" + b.failed_calls + " for " + age(b.failing_for_ms)),
            " ",
            el("span", { class: "error" }, b.last_error)
          );
        }
        if (b.heuristic !== null && b.heuristic !== undefined) {
          parts.push(" ", el("span", { class: "error" }, b.heuristic));
        }
        return el("li", {}, parts);
      })
    );
  }

  function labels(map) {
    return Object.entries(map || {}).map(([k, v]) => el("span", { class: "label-chip" }, k + "=" + v));
  }

  function renderNode(d) {
    const n = d.node;
    setText("node-id", n.id);
    const role = $("node-role");
    role.textContent = n.role;
    role.className = "role r-" + n.role;
    setText("term", n.term);
    setText("leader-id", n.leader_id === null ? "none" : n.leader_id);
    setText("leader-addr", n.leader_api_addr ? "(" + n.leader_api_addr + ")" : "");
    setText("log-index", n.last_log_index);
    setText("applied-index", n.last_applied_index);
    document.title = "Ratify · node " + n.id + " (" + n.role + ")";
  }

  function renderMembers(d) {
    const onLeader = d.node.role === "leader";
    rows(
      $("members"),
      d.members.map((m) =>
        el(
          "tr",
          { class: m.this_node ? "this-node" : "", "data-member": m.id },
          el("td", {}, m.id, m.this_node ? el("span", { class: "muted" }, " (this node)") : null),
          el("td", {}, el("span", { class: "role r-" + m.role }, m.role)),
          el("td", { class: "mono" }, m.raft_addr),
          el("td", { class: "mono" }, m.api_addr),
          el("td", {}, m.voter ? "yes" : "learner"),
          el("td", { class: "num" }, m.matched_index === null ? "–" : m.matched_index),
          el(
            "td",
            { class: "num" + (m.lag > 100 ? " warn" : "") },
            m.lag === null ? "–" : m.lag
          )
        )
      ),
      7,
      "no members known yet"
    );
    setText(
      "lag-note",
      onLeader
        ? "Lag: entries between the leader's last log index and what each member is known to hold."
        : "This node is not the leader: lag is shown on the leader's console" +
            (d.node.leader_api_addr ? " (leader's client address " + d.node.leader_api_addr + ")." : ".")
    );
  }

  function renderAttention(d) {
    const a = d.needs_attention;
    setText("attention-count", a.count);
    $("attention-count").parentElement.classList.toggle("alert", a.count > 0);
    setText("attention-note", a.truncated ? "(oldest " + a.listed.length + " of " + a.count + ")" : "");
    rows(
      $("attention"),
      a.listed.map((t) =>
        el(
          "tr",
          { class: "attention-row" },
          gtridCell(t.gtrid),
          el("td", {}, stateBadge(t.state)),
          el("td", {}, t.attention.map((w) => el("span", { class: "why" }, WHY[w] || w))),
          el("td", { class: "num" }, age(t.age_ms)),
          el("td", { class: "num" }, t.decided_age_ms === null ? "–" : age(t.decided_age_ms) + " ago"),
          el("td", {}, branchList(t.branches))
        )
      ),
      6,
      "nothing needs a person"
    );
  }

  function renderTxns(d) {
    const t = d.transactions;
    setText("live-count", t.live);
    setText("memory-count", t.in_leader_memory);
    setText("oldest-age", age(t.oldest_age_ms));
    const order = ["ACTIVE", "PREPARING", "COMMITTED", "ABORTED", "ONE_PHASE", "HEURISTIC"];
    const states = Object.keys(t.by_state).sort((a, b) => {
      const ia = order.indexOf(a), ib = order.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib);
    });
    $("states").replaceChildren(
      ...states.map((state) => [state, t.by_state[state]]).map(([state, n]) =>
        el("span", { class: "state-chip" + (n === 0 ? " zero" : ""), "data-state": state }, stateBadge(state), " ", el("b", {}, n))
      )
    );
    rows(
      $("txns"),
      t.listed.map((x) =>
        el(
          "tr",
          {},
          gtridCell(x.gtrid),
          el("td", {}, stateBadge(x.state), x.in_leader_memory ? el("span", { class: "muted" }, " memory") : null),
          el("td", { class: "num" }, age(x.age_ms)),
          el("td", {}, x.outcome ? x.outcome + " (" + x.reason + ")" : "–", x.detail ? el("div", { class: "muted" }, x.detail) : null),
          el("td", {}, labels(x.labels)),
          el("td", {}, branchList(x.branches))
        )
      ),
      6,
      "no live transactions"
    );
    setText("txns-note", t.truncated ? "Showing the oldest " + t.listed.length + " of " + t.live + "." : "");
  }

  function renderParticipants(d) {
    rows(
      $("participants"),
      d.participants.map((p) =>
        el(
          "tr",
          {},
          el("td", { class: "mono" }, p.endpoint),
          el("td", { class: "num" }, p.prepared_branches),
          el("td", { class: "num" + (p.failing_branches > 0 ? " warn" : "") }, p.failing_branches),
          el("td", { class: "num" }, age(p.oldest_prepared_age_ms)),
          gtridCell(p.oldest_gtrid)
        )
      ),
      5,
      "no branch is prepared"
    );
  }

  function renderChart(d) {
    const dec = d.decisions;
    const per = 1000 / (dec.interval_ms || 1000);
    const samples = dec.samples;
    const recent = samples.slice(-10);
    const sum = recent.reduce((n, s) => n + s.commit + s.abort, 0);
    setText("rate-now", recent.length ? ((sum * per) / recent.length).toFixed(1) : "–");
    setText("commit-total", dec.commit_total);
    setText("abort-total", dec.abort_total);
    const W = 600, H = 96, top = 14, slots = 120;
    const max = Math.max(1, ...samples.map((s) => (s.commit + s.abort) * per));
    const bw = W / slots;
    const y = (v) => H - (v / max) * (H - top);
    const bars = [];
    samples.forEach((s, i) => {
      const x = (slots - samples.length + i) * bw;
      const c = s.commit * per, a = s.abort * per;
      const tip = svg("title", {}, new Date(s.unix_ms).toLocaleTimeString() + ": " + c + " commits/s, " + a + " aborts/s");
      if (c > 0) bars.push(svg("rect", { class: "bar-commit", x: x, y: y(c), width: Math.max(bw - 1, 1), height: H - y(c) }, tip));
      if (a > 0) bars.push(svg("rect", { class: "bar-abort", x: x, y: y(c + a), width: Math.max(bw - 1, 1), height: y(c) - y(c + a) }, tip.cloneNode(true)));
    });
    $("chart").replaceChildren(
      svg("line", { class: "axis", x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5 }),
      svg("line", { class: "grid", x1: 0, y1: top, x2: W, y2: top }),
      svg("text", { class: "chart-label", x: 2, y: 11 }, "max " + max.toFixed(0) + "/s"),
      svg("text", { class: "chart-label", x: 2, y: H + 12 }, Math.round((slots * (dec.interval_ms || 1000)) / 60000) + " min ago"),
      svg("text", { class: "chart-label", x: W - 2, y: H + 12, "text-anchor": "end" }, "now"),
      ...bars
    );
  }

  let failures = 0;
  async function refresh() {
    try {
      const r = await fetch("/api/v1/console", { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status + ": " + (await r.text()).slice(0, 200));
      const d = await r.json();
      renderNode(d);
      renderMembers(d);
      renderAttention(d);
      renderTxns(d);
      renderParticipants(d);
      renderChart(d);
      failures = 0;
      $("error").hidden = true;
      setText("status", "updated " + new Date(d.generated_unix_ms).toLocaleTimeString());
    } catch (e) {
      failures += 1;
      const banner = $("error");
      banner.textContent = "Cannot read this node's console document (" + failures + " tries): " + e.message + ". Showing the last data.";
      banner.hidden = false;
    } finally {
      setTimeout(refresh, REFRESH_MS);
    }
  }
  refresh();
})();
