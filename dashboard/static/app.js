// meshledger dashboard: polls api/overview and renders tables and Vega-Lite charts.
// Every number comes from the projections; amounts are shown as the server formatted them (WMP).
"use strict";

const REFRESH_MS = Number(new URLSearchParams(location.search).get("refresh")) || 5000;
const SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json";
const views = (window.meshViews = {});
const drawn = {}; // chart id -> the JSON of the spec last drawn (redraw only on change)
window.meshRefreshes = 0;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

let names = {}; // address -> verified ENS name, when the server has ENS configured

function short(addr) {
  if (typeof addr !== "string" || !addr.startsWith("0x") || addr.length < 20) return addr;
  const code = el("code", { title: addr }, addr.slice(0, 6) + "…" + addr.slice(-4));
  return names[addr] ? el("span", { class: "ens" }, names[addr] + " ", code) : code;
}

// columns: [label, key, kind] with kind "num", "amount", "addr" or "" (text)
function fill(table, columns, rows, rowKey) {
  table.replaceChildren();
  if (!rows.length) {
    table.append(el("tr", {}, el("td", { class: "empty" }, "none yet")));
    return;
  }
  table.append(el("tr", {}, ...columns.map(([label]) => el("th", {}, label))));
  for (const row of rows) {
    const tr = el("tr", { dataset: { row: rowKey(row) } });
    for (const [, key, kind] of columns) {
      let value = typeof key === "function" ? key(row) : row[key];
      const attrs = { dataset: { k: typeof key === "function" ? kind : key } };
      if (kind === "amount") {
        attrs.title = value.text + " = " + value.base + " base units";
        value = value.short;
      }
      if (kind === "amount" || kind === "num") attrs.class = "num";
      const cell = el("td", attrs);
      cell.append(kind === "addr" ? short(value) : value instanceof Node ? value : String(value ?? "—"));
      tr.append(cell);
    }
    table.append(tr);
  }
}

async function chart(id, spec) {
  const target = document.getElementById(id);
  const text = JSON.stringify(spec);
  if (!target || drawn[id] === text) return;
  drawn[id] = text;
  const result = await vegaEmbed(target, { $schema: SCHEMA, ...spec }, { renderer: "svg", actions: false });
  views[id] = result.view;
  target.dataset.rendered = String(Number(target.dataset.rendered || 0) + 1);
}

function bandwidthSpec(points) {
  return {
    width: 620,
    height: 200,
    data: { name: "table", values: points },
    transform: [{ fold: ["reserved", "provided", "used"], as: ["series", "mpb"] }],
    mark: { type: "line", interpolate: "step-after", point: points.length < 60 },
    encoding: {
      x: { field: "block", type: "quantitative", title: "block" },
      y: { field: "mpb", type: "quantitative", title: "messages per block" },
      color: { field: "series", type: "nominal", scale: { domain: ["reserved", "provided", "used"] } },
      tooltip: [{ field: "block" }, { field: "series" }, { field: "mpb" }],
    },
    params: [{ name: "zoom", select: "interval", bind: "scales" }], // drag to pan, wheel to zoom
  };
}

function stakesSpec(stakes) {
  return {
    width: 260,
    height: 160,
    data: { name: "table", values: stakes },
    mark: "bar",
    encoding: {
      y: { field: "role", type: "nominal", sort: null, title: null },
      x: { field: "wmp", type: "quantitative", title: "staked (WMP)" },
      tooltip: [{ field: "role" }, { field: "text", title: "staked" }],
    },
  };
}

function renderRealms(realms) {
  const list = document.getElementById("realm-list");
  const seen = new Set();
  for (const r of realms) {
    const id = "realm-" + r.realm;
    seen.add(id);
    let card = document.getElementById(id);
    if (!card) {
      card = el("div", { id, class: "realm", dataset: { realm: r.realm } },
        el("h3", {}, "realm ", el("span", { class: "realm-name" }, r.realm)),
        el("div", { class: "realm-top" },
          el("table", { class: "params" }),
          el("figure", {}, el("figcaption", {}, "Stakes by role"), el("div", { id: "chart-stakes-" + r.realm, class: "chart" }))),
        el("figure", {}, el("figcaption", {}, "Bandwidth: reserved, provided and used messages per block (drag to pan, scroll to zoom)"),
          el("div", { id: "chart-bandwidth-" + r.realm, class: "chart" })));
      list.append(card);
    }
    const p = r.params;
    fill(card.querySelector("table.params"), [["parameter", "name"], ["value", "value", "num"]], [
      { name: "keeper", value: short(r.keeper) },
      { name: "epoch blocks", value: p.epoch_blocks },
      { name: "funding rate (bps of reserved stake)", value: p.rfr_bps },
      { name: "weights router / service / vendor (bps)", value: `${p.weights_bps.router} / ${p.weights_bps.service} / ${p.weights_bps.vendor}` },
      { name: "stake per message per block", value: p.stake_per_mpb.short },
      { name: "price per message", value: p.price_per_message.short },
      { name: "stake positions", value: r.positions },
      { name: "bandwidth points", value: r.bandwidth_points },
    ], (row) => row.name);
    chart("chart-stakes-" + r.realm, stakesSpec(r.stakes));
    chart("chart-bandwidth-" + r.realm, bandwidthSpec(r.bandwidth));
  }
  for (const card of [...list.children]) if (!seen.has(card.id)) card.remove();
}

function renderEpochs(data) {
  chart("chart-payouts-class", {
    width: 480,
    height: 220,
    data: { name: "table", values: data.payouts_by_class },
    transform: [{ calculate: "datum.realm + ' #' + datum.epoch", as: "epoch_label" }],
    mark: "bar",
    encoding: {
      x: { field: "epoch_label", type: "ordinal", sort: null, title: "realm #epoch" },
      y: { field: "wmp", type: "quantitative", title: "paid (WMP)" },
      color: { field: "payee_class", type: "nominal", title: "class" },
      tooltip: [{ field: "epoch_label" }, { field: "payee_class" }, { field: "text", title: "paid" }],
    },
  });
  chart("chart-payouts-payee", {
    width: 420,
    height: { step: 16 },
    data: { name: "table", values: data.payouts_by_payee },
    transform: [{ calculate: "length(datum.account) > 20 ? slice(datum.account, 0, 6) + '…' + slice(datum.account, -4) : datum.account", as: "payee" }],
    mark: "bar",
    encoding: {
      y: { field: "payee", type: "nominal", sort: "-x", title: null },
      x: { field: "wmp", type: "quantitative", title: "paid (WMP)" },
      color: { field: "realm", type: "nominal" },
      tooltip: [{ field: "account" }, { field: "realm" }, { field: "text", title: "paid" }],
    },
  });
  const txs = (row) => {
    const span = el("span");
    for (const t of row.txs) {
      const label = t.step + " " + t.tx.slice(0, 8) + "…";
      span.append(t.url ? el("a", { href: t.url, target: "_blank", rel: "noopener" }, label) : el("code", { title: t.tx }, label), " ");
    }
    return span;
  };
  const state = (row) => el("span", { class: "state state-" + row.state }, row.state);
  const usd = data.epochs.some((r) => r.usd) ? [["paid (USD)", (r) => (r.usd === "stale" ? "stale" : "$" + r.usd), "usd"]] : [];
  fill(document.getElementById("epoch-table"), [
    ["realm", "realm"], ["epoch", "epoch", "num"], ["blocks", (r) => `${r.first_block}–${r.last_block}`, "blocks"],
    ["funding", "funding", "amount"], ["carried in", "carry_in", "amount"], ["paid", "total", "amount"], ...usd,
    ["remainder carried", "remainder", "amount"], ["payees", "payees", "num"], ["late messages", "late_messages", "num"],
    ["settlement", state, "state"], ["transactions", txs, "txs"],
  ], data.epochs.slice().reverse(), (r) => r.realm + "/" + r.epoch);
}

function renderSwap(swap) {
  fill(document.getElementById("swap-table"), [
    ["realm", "realm"], ["router", "router", "addr"], ["peer", "peer", "addr"], ["cheques", "received", "num"],
    ["cumulative", "cumulative", "amount"], ["paid by cheques", "paid", "amount"], ["rejected", "rejected", "num"],
    ["disconnected", "disconnected", "num"],
  ], swap.accounts, (r) => r.router + "/" + r.peer);
  fill(document.getElementById("cashout-table"), [
    ["router", "router", "addr"], ["cashed", "cashed", "num"], ["bounced", "bounced", "num"], ["paid out", (r) => r, "amount"],
  ], swap.cashouts, (r) => r.router);
}

function renderChain(chain) {
  document.getElementById("chain-head").textContent =
    chain.head === null ? "no chain head reported yet" : `chain head (highest source watermark): block ${chain.head}; logs retracted by reorgs: ${chain.retracted_logs}`;
  fill(document.getElementById("source-table"), [
    ["source", "source", "addr"], ["watermark", "watermark", "num"], ["behind head (blocks)", "lag_blocks", "num"],
    ["records", "records", "num"], ["events", "events", "num"],
  ], chain.sources, (r) => r.source);
  fill(document.getElementById("price-table"), [
    ["feed", "feed", "addr"], ["answer", "answer", "num"], ["decimals", "decimals", "num"], ["status", "status"], ["block", "block", "num"],
  ], chain.prices, (r) => r.feed);
  fill(document.getElementById("reorg-table"), [
    ["realm", "realm"], ["epoch", "epoch", "num"], ["retracted", "retracted"], ["block", "block", "num"],
  ], chain.reorg_flags, (r) => r.realm + "/" + r.epoch + "/" + r.block);
  fill(document.getElementById("dead-table"), [["rejected because", "reason"], ["records", "records", "num"]],
    chain.dead, (r) => r.reason);
}

function renderMarket(market) {
  fill(document.getElementById("reputation-table"), [
    ["realm", "realm"], ["service", "service_id", "addr"], ["operator", "operator", "addr"], ["calls", "calls", "num"],
    ["results", "results", "num"], ["errors", "errors", "num"], ["timeouts", "timeouts", "num"],
    ["success %", (r) => (r.success_bps / 100).toFixed(2), "success"], ["p50 ms", "p50_ms", "num"],
    ["p95 ms", "p95_ms", "num"], ["charged", "charged", "amount"], ["mismatches", "mismatches", "num"],
    ["convictions", "convictions", "num"],
  ], market.reputation, (r) => r.realm + "/" + r.service_id + "/" + r.operator);
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const resp = await fetch("api/overview", { cache: "no-store" });
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error || resp.statusText);
    names = data.names || {};
    renderRealms(data.realms);
    renderEpochs(data);
    renderSwap(data.swap);
    renderChain(data.chain);
    renderMarket(data.market);
    window.meshRefreshes += 1;
    status.dataset.state = "ok";
    status.textContent = "updated " + new Date().toLocaleTimeString() + " · every " + REFRESH_MS / 1000 + " s";
  } catch (err) {
    status.dataset.state = "error";
    status.textContent = "cannot read the ledger: " + err.message;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
