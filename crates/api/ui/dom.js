// Building DOM nodes without innerHTML: every value from the API lands as text.

/** `h('p', {class: 'x', onclick: f}, 'text', child)` */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = Boolean(v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

let counter = 0;
/** A document-unique id for label/description wiring. */
export function uid(prefix) {
  counter += 1;
  return `${prefix}-${counter}`;
}

const relative = new Intl.RelativeTimeFormat('en', { numeric: 'auto' });
const absolute = new Intl.DateTimeFormat('en', { dateStyle: 'medium', timeStyle: 'short' });

/** "3 minutes ago" / "in 2 hours", with the exact time as the element's title. */
export function time(iso, none = 'Never') {
  if (!iso) return h('span', { class: 'muted' }, none);
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return h('span', {}, String(iso));
  return h('time', { datetime: d.toISOString(), title: absolute.format(d) }, relativeText(d));
}

export function relativeText(d) {
  const seconds = Math.round((d.getTime() - Date.now()) / 1000);
  const abs = Math.abs(seconds);
  if (abs < 45) return relative.format(Math.round(seconds), 'second');
  if (abs < 45 * 60) return relative.format(Math.round(seconds / 60), 'minute');
  if (abs < 22 * 3600) return relative.format(Math.round(seconds / 3600), 'hour');
  if (abs < 26 * 86400) return relative.format(Math.round(seconds / 86400), 'day');
  return absolute.format(d);
}

const STATUS = {
  active: { label: 'Active', icon: '✓', hint: 'ready to use' },
  incomplete: { label: 'Incomplete', icon: '…', hint: 'the account is not connected yet' },
  expired: { label: 'Expired', icon: '!', hint: 'must be reconnected' },
};

/** A status badge: an icon shape and a word, so it reads without colour. */
export function statusBadge(status) {
  const s = STATUS[status] || { label: status, icon: '?', hint: '' };
  return h(
    'span',
    { class: `status status-${status}`, title: s.hint },
    h('span', { class: 'status-icon', 'aria-hidden': 'true' }, s.icon),
    h('span', { class: 'status-label' }, s.label),
  );
}

export function statusLabel(status) {
  return (STATUS[status] || { label: status }).label;
}

let announcer = null;
/** Says `text` to screen readers (a polite live region). */
export function announce(text) {
  announcer = announcer || document.getElementById('announcer');
  if (!announcer) return;
  announcer.textContent = '';
  // A new text node in a later task is announced even when the text repeats.
  setTimeout(() => {
    announcer.textContent = text;
  }, 50);
}
