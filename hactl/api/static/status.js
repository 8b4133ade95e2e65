// The status page: polls the JSON API every 2 s and renders two tables; the drain, enable
// and disable buttons call the same endpoints as the CLI. No framework, no build step.
"use strict";

const tokenInput = document.getElementById("token");
tokenInput.value = sessionStorage.getItem("hactl-token") || "";
tokenInput.addEventListener("change", () => sessionStorage.setItem("hactl-token", tokenInput.value));

function headers() {
  const h = { "Content-Type": "application/json" };
  if (tokenInput.value) h["Authorization"] = "Bearer " + tokenInput.value;
  return h;
}

async function getJSON(path) {
  const r = await fetch(path, { headers: headers() });
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function rsPath(vs, rs) {
  return "/api/v1/virtual-servers/" + encodeURIComponent(vs) + "/real-servers/" + encodeURIComponent(rs);
}

async function act(vs, rs, op) {
  const body = op === "drain" ? { expire_templates: document.getElementById("expire").checked } : {};
  const r = await fetch(rsPath(vs, rs) + "/" + op, {
    method: "POST", headers: headers(), body: JSON.stringify(body),
  });
  const errorBox = document.getElementById("error");
  if (!r.ok) {
    let message = r.status + "";
    try { message = (await r.json()).error.message; } catch (e) { /* not JSON */ }
    errorBox.textContent = op + " " + rs + ": " + message;
  } else {
    errorBox.textContent = "";
  }
  refresh();
}

function button(td, label, vs, rs, op) {
  const b = document.createElement("button");
  b.textContent = label;
  b.dataset.op = op;
  b.dataset.rs = rs;
  b.addEventListener("click", () => act(vs, rs, op));
  td.appendChild(b);
}

async function refresh() {
  try {
    const [info, vrrp, vss] = await Promise.all([
      getJSON("/api/v1/info"), getJSON("/api/v1/vrrp/instances"), getJSON("/api/v1/virtual-servers"),
    ]);
    document.getElementById("meta").textContent =
      "version " + info.version + " · " + info.backend + " IPVS · config " + info.config_path +
      " loaded " + new Date(info.config_loaded_at * 1000).toISOString();
    const vbody = document.querySelector("#vrrp tbody");
    vbody.replaceChildren();
    for (const i of vrrp.instances) {
      const row = vbody.insertRow();
      cell(row, i.name); cell(row, i.interface); cell(row, i.vrid, "num");
      cell(row, i.state, i.state);
      cell(row, i.effective_priority + "/" + i.priority, "num");
      cell(row, i.master_address || "-"); cell(row, i.transitions, "num"); cell(row, i.split_brain, "num");
    }
    const sbody = document.querySelector("#servers tbody");
    sbody.replaceChildren();
    for (const vs of vss.virtual_servers) {
      const head = sbody.insertRow();
      head.className = "vs";
      const td = cell(head, vs.id + "  " + vs.scheduler + (vs.quorum_up ? "" : "  QUORUM DOWN"));
      td.colSpan = 9;
      for (const rs of vs.real_servers) {
        const row = sbody.insertRow();
        row.dataset.rs = rs.id;
        cell(row, "  " + rs.id);
        cell(row, rs.health, rs.health);
        cell(row, (rs.in_ipvs ? rs.effective_weight : "out") + "/" + rs.configured_weight, "num");
        cell(row, rs.connections.active, "num");
        cell(row, rs.connections.inactive, "num");
        cell(row, rs.connections.persistent, "num");
        const c = rs.checks[0];
        cell(row, c && c.ok !== null ? c.kind + (c.ok ? " ok" : " FAIL") +
          (c.latency !== null ? " " + (c.latency * 1000).toFixed(1) + " ms" : "") : "-");
        const o = rs.override;
        cell(row, o ? o.kind + (o.weight !== undefined ? " " + o.weight : "") : "", "override");
        const actions = row.insertCell();
        button(actions, "Drain", vs.id, rs.id, "drain");
        button(actions, "Disable", vs.id, rs.id, "disable");
        button(actions, "Enable", vs.id, rs.id, "enable");
      }
    }
    document.getElementById("error").dataset.stale = "";
  } catch (e) {
    document.getElementById("meta").textContent = "cannot read the API: " + e.message;
  }
}

refresh();
setInterval(refresh, 2000);
