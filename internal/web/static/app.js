// lungseg viewer: fed by server-sent events from /events.
'use strict';

const MAX_CARDS = 24;
const THUMB = 256;
const BIG = 768;

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k === 'style') e.style.cssText = v;
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
};
const fmt = (v, d = 3) => (typeof v === 'number' && isFinite(v) ? v.toFixed(d) : '–');
const sliceURL = (key, size, version, layers) => {
  let u = 'api/slice.png?key=' + encodeURIComponent(key) + '&size=' + size + '&v=' + version;
  if (layers) u += '&layers=' + encodeURIComponent(layers.join(','));
  return u;
};

const state = {
  slices: new Map(), // key → view
  cards: new Map(),  // key → card element
  colors: new Map(), // model → colour
  stats: new Map(),  // replay → stats
  replay: null,      // replay shown in the metrics panel
  open: null,        // key open in the modal
  hu: null,          // {rows, cols, data: Int16Array} of the open slice
};

function addModel(model, color) {
  if (state.colors.has(model)) return;
  state.colors.set(model, color);
  $('#legend').append(el('li', { 'data-model': model }, el('span', { class: 'swatch', style: 'background:' + color }), model));
}

function chip(s) {
  const c = el('span', { class: 'chip', style: 'border-color:' + s.color, title: s.model });
  c.textContent = s.has_truth ? `${s.model} ${fmt(s.dice, 2)}` : `${s.model} ${s.predicted_pixels}px`;
  return c;
}

function upsertSlice(v) {
  for (const s of v.scores || []) addModel(s.model, s.color);
  state.slices.set(v.key, v);
  let card = state.cards.get(v.key);
  if (!card) {
    card = el('div', { class: 'card', 'data-key': v.key, tabindex: '0' });
    card.addEventListener('click', () => openSlice(v.key));
    card.addEventListener('keydown', (e) => { if (e.key === 'Enter') openSlice(v.key); });
    state.cards.set(v.key, card);
  }
  // The thumbnail survives updates: a new version loads in an img of its
  // own, off the page, and replaces the shown one once it has loaded, so a
  // card never goes blank while a replay streams (every score of every
  // model updates the card; changing an img's src blanks it in Chromium).
  let thumb = card.querySelector('img.thumb');
  card.replaceChildren();
  if (v.has_ct) {
    const url = sliceURL(v.key, THUMB, v.version);
    if (!thumb) {
      thumb = el('img', { src: url, width: THUMB, height: THUMB, alt: v.id, class: 'thumb' });
    } else if (thumb.dataset.want !== url && thumb.getAttribute('src') !== url) {
      thumb.dataset.want = url;
      const cur = thumb;
      const next = el('img', { src: url, width: THUMB, height: THUMB, alt: v.id, class: 'thumb' });
      next.addEventListener('load', () => { if (cur.dataset.want === url && cur.isConnected) cur.replaceWith(next); });
    }
    card.append(thumb);
  } else {
    card.append(el('div', { class: 'noimg' }, 'no CT yet'));
  }
  const label = v.label ? ` · ${v.label}` : '';
  card.append(el('div', { class: 'id', title: v.key }, v.id + label));
  const chips = el('div', { class: 'chips' });
  for (const s of v.scores || []) chips.append(chip(s));
  card.append(chips);
  card.dataset.models = (v.scores || []).length;
  const grid = $('#slices');
  if (grid.firstChild !== card) grid.prepend(card);
  while (grid.children.length > MAX_CARDS) {
    const last = grid.lastChild;
    state.cards.delete(last.dataset.key);
    state.slices.delete(last.dataset.key);
    last.remove();
  }
  $('#empty').hidden = grid.children.length > 0;
  $('#count').textContent = `${grid.children.length} shown`;
  if (state.open === v.key) renderModal();
}

function setStats(st) {
  state.stats.set(st.replay, st);
  state.replay = st.replay;
  for (const m of st.models || []) addModel(m.model, m.color);
  const tb = $('#metrics tbody');
  tb.replaceChildren();
  for (const m of st.models || []) {
    const name = el('td', {}, el('span', { class: 'swatch', style: 'background:' + m.color }), m.model);
    // as the CLI table: the mean over slices with truth first, pooled second,
    // empty-truth slices apart (clean / with a false positive)
    tb.append(el('tr', { 'data-model': m.model }, name,
      el('td', { class: 'n' }, `${m.with_truth}/${m.slices}`),
      el('td', { class: 'dice' }, m.with_truth ? fmt(m.mean_dice) : '–'),
      el('td', { class: 'pooled' }, m.scored ? fmt(m.pooled_dice) : '–'),
      el('td', { class: 'empty' }, m.empty_clean + m.empty_fp ? `${m.empty_clean}/${m.empty_fp}` : '–'),
      el('td', {}, m.with_truth ? fmt(m.mean_iou) : '–'),
      el('td', {}, fmt(m.inference_ms, 1))));
  }
  $('#replay').textContent = st.replay;
  $('#errors').textContent = st.errors ? `${st.errors} errors in this replay` : '';
}

function addAlert(a) {
  const list = $('#alerts');
  const t = new Date(a.time);
  const li = el('li', { class: a.level, 'data-kind': a.kind }, el('time', {}, t.toLocaleTimeString()), a.text);
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
}

function reset() {
  state.slices.clear();
  state.cards.clear();
  $('#slices').replaceChildren();
  $('#alerts').replaceChildren();
}

// Modal: a slice opened large, with the HU under the cursor.
function openSlice(key) {
  const v = state.slices.get(key);
  if (!v) return;
  state.open = key;
  state.hu = null;
  const box = $('#layers');
  box.replaceChildren(el('legend', {}, 'outlines'));
  const layer = (name, color) => {
    const cb = el('input', { type: 'checkbox', value: name });
    cb.checked = true;
    cb.addEventListener('change', renderModal);
    box.append(el('label', {}, cb, el('span', { class: 'swatch', style: 'background:' + color }), name));
  };
  if (v.has_truth) layer('truth', getComputedStyle(document.documentElement).getPropertyValue('--truth'));
  for (const s of v.scores || []) layer(s.model, s.color);
  $('#modal').hidden = false;
  renderModal();
  if (v.has_ct) {
    fetch('api/hu?key=' + encodeURIComponent(key)).then((r) => {
      if (!r.ok) throw new Error(r.status);
      const rows = +r.headers.get('X-Rows'), cols = +r.headers.get('X-Cols');
      return r.arrayBuffer().then((b) => {
        if (state.open === key) state.hu = { rows, cols, data: new Int16Array(b) };
      });
    }).catch((e) => { $('#hu').textContent = 'HU unavailable (' + e.message + ')'; });
  }
}

function renderModal() {
  const v = state.slices.get(state.open);
  if (!v) return;
  const spacing = v.row_mm ? ` · ${fmt(v.row_mm, 2)}×${fmt(v.col_mm, 2)} mm` : '';
  $('#modal-title').textContent = `${v.id} (${v.rows}×${v.cols}${spacing}) · ${v.replay}`;
  const layers = [...document.querySelectorAll('#layers input')].filter((c) => c.checked).map((c) => c.value);
  const size = Math.min(1024, Math.max(BIG, v.rows, v.cols));
  if (v.has_ct) $('#big').src = sliceURL(v.key, size, v.version, layers.length ? layers : ['none']);
  const tb = $('#detail tbody');
  tb.replaceChildren();
  for (const s of v.scores || []) {
    const f = (s.findings || []).map((x) => `${fmt(x.diameter_mm, 1)} mm ${x.category}`).join(', ') || 'none';
    tb.append(el('tr', {}, el('td', {}, el('span', { class: 'swatch', style: 'background:' + s.color }), s.model),
      el('td', {}, s.has_truth ? fmt(s.dice) : '–'), el('td', {}, s.has_truth ? fmt(s.iou) : '–'), el('td', {}, fmt(s.rmse)), el('td', {}, f)));
  }
}

$('#big').addEventListener('mousemove', (e) => {
  const v = state.slices.get(state.open), hu = state.hu;
  if (!v || !hu) return;
  const img = e.currentTarget;
  const c = Math.floor((e.offsetX / img.clientWidth) * hu.cols);
  const r = Math.floor((e.offsetY / img.clientHeight) * hu.rows);
  if (r < 0 || c < 0 || r >= hu.rows || c >= hu.cols) return;
  $('#hu').textContent = `HU ${hu.data[r * hu.cols + c]} at row ${r}, col ${c}`;
});
$('#close').addEventListener('click', () => { $('#modal').hidden = true; state.open = null; });
document.addEventListener('keydown', (e) => { if (e.key === 'Escape') $('#close').click(); });

function connect() {
  const es = new EventSource('events');
  const conn = $('#conn');
  es.onopen = () => { conn.textContent = 'live'; conn.className = 'conn on'; document.body.dataset.connected = '1'; };
  es.onerror = () => { conn.textContent = 'reconnecting…'; conn.className = 'conn off'; document.body.dataset.connected = ''; };
  es.addEventListener('snapshot', (e) => {
    const s = JSON.parse(e.data);
    reset();
    for (const m of s.models || []) addModel(m.model, m.color);
    for (const v of (s.slices || []).slice().reverse()) upsertSlice(v);
    for (const st of (s.stats || []).slice().reverse()) setStats(st);
    for (const a of s.alerts || []) addAlert(a);
  });
  es.addEventListener('slice', (e) => upsertSlice(JSON.parse(e.data)));
  es.addEventListener('stats', (e) => setStats(JSON.parse(e.data)));
  es.addEventListener('alert', (e) => addAlert(JSON.parse(e.data)));
}
connect();
