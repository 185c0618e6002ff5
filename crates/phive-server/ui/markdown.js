// A small Markdown renderer that builds DOM nodes: model output only ever becomes text nodes
// (never HTML), so whatever the model writes, `<script>` included, shows as text.
//
// Covers what chat answers use: fenced code blocks (an unclosed fence, as while streaming,
// runs to the end), headings, bullet and numbered lists, quotes, paragraphs, and inline
// code, bold, italic and http(s) links.

const FENCE = /^\s*(```|~~~)\s*([\w+#.-]*)\s*$/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const ITEM = /^\s*([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^>\s?(.*)$/;
const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*(.+?)\*\*|__(.+?)__|\*([^*\s](?:.*?[^*\s])?)\*|\[([^\]]+)\]\(([^)\s]+)\)/g;

/** Renders `source` into `container`, replacing what it held. */
export function renderMarkdown(container, source) {
  container.replaceChildren(...blocks(source.split("\n")));
}

function el(tag, children = [], className = "") {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.append(...children);
  return node;
}

function blocks(lines) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i += 1;
      out.push(codeBlock(body.join("\n"), fence[2]));
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      out.push(el(`h${Math.min(heading[1].length + 2, 6)}`, inline(heading[2])));
      i += 1;
      continue;
    }
    if (ITEM.test(line)) {
      const ordered = /\d/.test(ITEM.exec(line)[1]);
      const items = [];
      while (i < lines.length && ITEM.test(lines[i]) && /\d/.test(ITEM.exec(lines[i])[1]) === ordered) {
        items.push(el("li", inline(ITEM.exec(lines[i])[2])));
        i += 1;
      }
      out.push(el(ordered ? "ol" : "ul", items));
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) quoted.push(QUOTE.exec(lines[i++])[1]);
      out.push(el("blockquote", blocks(quoted)));
      continue;
    }
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const paragraph = [];
    while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) paragraph.push(lines[i++]);
    out.push(el("p", inline(paragraph.join("\n"))));
  }
  return out;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || ITEM.test(line) || QUOTE.test(line);
}

function codeBlock(text, language) {
  const code = el("code", [text]);
  if (language) code.dataset.language = language;
  const copy = el("button", ["Copy"], "copy");
  copy.type = "button";
  copy.setAttribute("aria-label", "Copy the code");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      copy.textContent = "Copied";
    } catch {
      copy.textContent = "Copy failed";
    }
    setTimeout(() => (copy.textContent = "Copy"), 1500);
  });
  return el("div", [el("pre", [code]), copy], "code");
}

/** Inline spans of `text` as nodes; markup the model gets wrong stays visible as text. */
function inline(text) {
  const out = [];
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    last = m.index + m[0].length;
    if (m[2] !== undefined) out.push(el("code", [m[2]]));
    else if (m[3] !== undefined || m[4] !== undefined) out.push(el("strong", inline(m[3] ?? m[4])));
    else if (m[5] !== undefined) out.push(el("em", inline(m[5])));
    else out.push(link(m[6], m[7]) ?? m[0]);
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

/** A link that opens in a new tab, for http(s) targets only (no `javascript:` and the like). */
function link(label, target) {
  let url;
  try {
    url = new URL(target);
  } catch {
    return null;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return null;
  const a = el("a", inline(label));
  a.href = url.href;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  return a;
}
