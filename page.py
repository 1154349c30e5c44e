"""One self-contained HTML page of predictions (predict.py --html): per document its text with every entity's
mentions in the entity's colour, the relations as a table and as a graph, and what the inference module changed:
the relations each pass k = 1..K adds to and removes from the base module's (pass 0). Where the input has gold
labels, each relation is marked correct, wrong or missed.

Pure string building: inline CSS, SVG and script, nothing loaded from anywhere; every text is escaped. Without
script the page shows the final pass; the buttons above each graph show any pass. The elements that carry a
relation have data-h, data-t (entity indices), data-r (relation id) and data-passes (the passes that predict it),
so that a program can read the page back (tests/test_page.py does).
"""
import html
import math

STYLE = """
body{font:14px/1.5 system-ui,sans-serif;margin:24px auto;max-width:1400px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 4px;border-top:1px solid #ccc;padding-top:16px}
h3{font-size:15px;margin:18px 0 6px}.note,.summary{color:#444}.text{max-width:1000px}
mark{border-radius:3px;padding:0 2px;cursor:default}mark.hl,circle.hl{outline:2px solid #222}
.cols{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}.side{flex:1 1 340px;min-width:340px}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #e3e3e3;padding:2px 8px;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.on{color:#222}.off{color:#bbb}.correct{color:#1a7f37}.wrong{color:#c62828}.missed{color:#b26a00}
.tag{font-size:12px;padding:0 6px;border-radius:8px;white-space:nowrap}
.tag.added{background:#dbe9ff}.tag.removed{background:#eee;text-decoration:line-through}
.tag.base,.tag.passing{background:#f1f1f1}.tag.missed{background:#fff0d9}
.passes button{font:inherit;margin:0 4px 6px 0;padding:1px 10px;border:1px solid #999;background:#fff;
border-radius:4px;cursor:pointer}.passes button.sel{background:#222;color:#fff}
svg text{font:11px system-ui,sans-serif;paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
svg .node text{font-size:12px;font-weight:600}
.rel path{fill:none;stroke:#555;stroke-width:1.4}.rel.added path{stroke:#1f5fd1;stroke-width:2.6}
.rel.removed path{stroke:#999;stroke-dasharray:2 3}.rel.removed text{text-decoration:line-through}
.rel.missed path{stroke:#e39b2d;stroke-dasharray:6 4}.rel.hidden{display:none}
.rel.fact text{fill:#1a7f37}.rel.nonfact text{fill:#c62828}.rel.missed text{fill:#b26a00}
ul.changes{margin:0;padding-left:0;list-style:none;font-size:13px}h4{margin:10px 0 2px;font-size:14px}
"""
# Shows pass k of a graph (relations predicted by k: kept or added against pass 0; pass 0's that k drops: removed;
# gold facts that k misses: missed) and links an entity's mentions, node and names under the pointer.
SCRIPT = """
function show(section, k) {
  section.querySelectorAll('.passes button').forEach(b => b.classList.toggle('sel', b.dataset.k == k));
  section.querySelectorAll('g.rel').forEach(g => {
    const passes = g.dataset.passes ? g.dataset.passes.split(' ') : [];
    const now = passes.includes(String(k)), base = passes.includes('0'), gold = g.dataset.gold;
    const kind = now ? (base ? 'kept' : 'added') : base ? 'removed' : gold == '1' ? 'missed' : 'hidden';
    g.setAttribute('class', 'rel ' + kind + (gold === undefined ? '' : gold == '1' ? ' fact' : ' nonfact'));
    g.querySelector('tspan.sign').textContent = kind == 'added' ? '+ ' : kind == 'removed' ? '\\u2212 ' : '';
    g.querySelector('tspan.mark').textContent = gold === undefined ? '' : kind == 'missed' ? 'missed: ' :
      gold == '1' ? '\\u2713 ' : '\\u2717 ';
  });
}
document.querySelectorAll('.passes button').forEach(b =>
  b.addEventListener('click', () => show(b.closest('section'), Number(b.dataset.k))));
document.querySelectorAll('[data-e]').forEach(el => {
  const mark = on => el.closest('section').querySelectorAll('[data-e="' + el.dataset.e + '"]')
    .forEach(x => x.classList.toggle('hl', on));
  el.addEventListener('mouseenter', () => mark(true));
  el.addEventListener('mouseleave', () => mark(false));
});
"""
NO_SPACE_BEFORE = {",", ".", ";", ":", "!", "?", ")", "]", "}", "%", "...", "…", "'s", "’s", "n't", "'"}
NO_SPACE_AFTER = {"(", "[", "{", "$", "#"}


def render(docs, passes, gold, rel_names, heading):
    """The page. docs: DocRED-format documents; passes: per document, per pass k = 0..K, {(h, t, relation id):
    margin over the threshold class}; gold: per document the set of (h, t, relation id), or None where the
    document has no labels; rel_names: relation id -> name; heading: the page's title."""
    k_last = len(passes[0]) - 1 if passes else 0
    sections = [_document(i, doc, p, g, rel_names) for i, (doc, p, g) in enumerate(zip(docs, passes, gold))]
    contents = ""
    if len(docs) > 1:
        contents = "<ol>" + "".join(f'<li><a href="#doc-{i}">{_e(doc["title"])}</a></li>'
                                    for i, doc in enumerate(docs)) + "</ol>"
    what = ("the base module alone (K = 0)" if k_last == 0 else
            f"the base module (pass 0) and {k_last} pass{'es' if k_last > 1 else ''} of the inference module")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(heading)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{_e(heading)}</h1>"
            f'<p class="note">Relations predicted by {what}. In the graphs a blue edge (+) is a relation the '
            f"inference module added to the base module's, a dotted one (&minus;) one it removed; where the "
            f'document has gold labels, <span class="correct">&#10003; correct</span>, '
            f'<span class="wrong">&#10007; wrong</span> and <span class="missed">missed</span> (a dashed edge). '
            f"Scores are margins over the threshold class (&gt; 0: predicted).</p>"
            f"{contents}{''.join(sections)}<script>{SCRIPT}</script></body></html>\n")


def _e(text):
    return html.escape(str(text), quote=True)


def _colour(e, light):
    """Entity e's colour: hues 137.5 degrees apart (the golden angle), so that neighbours differ."""
    return f"hsl({e * 137.508 % 360:.0f},70%,{86 if light else 55}%)"


def _names(doc):
    """Each entity's name: its first mention's, else "entity i"."""
    return [next((m["name"] for m in mentions if isinstance(m.get("name"), str)), f"entity {i}")
            for i, mentions in enumerate(doc["vertexSet"])]


def _marks(kind, fact):
    """The mark before a relation's label: + or minus for a change against pass 0, then check or cross for a gold
    relation or not (nothing without gold labels, "missed: " for a gold relation the pass misses)."""
    sign = {"added": "+ ", "removed": "&#8722; "}.get(kind, "")
    mark = "" if fact is None else "missed: " if kind == "missed" else "&#10003; " if fact else "&#10007; "
    return sign, mark


def _kind(in_passes, k, fact):
    """How a relation's edge shows when the graph shows pass k (SCRIPT's show() computes the same)."""
    now, base = k in in_passes, 0 in in_passes
    if now:
        return "kept" if base else "added"
    return "removed" if base else "missed" if fact else "hidden"


def _final(triple, final, fact):
    """The last pass against the gold labels: correct, wrong, missed, "off" (neither predicted nor gold), or ""
    without labels."""
    if fact is None:
        return ""
    if triple in final:
        return "correct" if fact else "wrong"
    return "missed" if fact else "off"


def _verdict(verdict):
    return {"correct": "&#10003; correct", "wrong": "&#10007; wrong", "missed": "missed",
            "off": "&#10007; not gold", "": ""}[verdict]


def _document(index, doc, passes, gold, rel_names):
    names = _names(doc)
    k_last = len(passes) - 1
    base, final = passes[0], passes[-1]
    rows = [(triple, [k for k, p in enumerate(passes) if triple in p], None if gold is None else triple in gold)
            for triple in sorted(set().union(*passes) | (gold or set()))]
    added, removed = set(final) - set(base), set(base) - set(final)
    summary = f"{len(base)} relations from the base module"
    if k_last:
        summary += (f"; after pass {k_last}: {len(final)} (the inference module added {len(added)} and removed "
                    f"{len(removed)})")
    if gold is not None:
        correct = len(set(final) & gold)
        summary += (f". Against the {len(gold)} gold relations: {correct} correct, {len(final) - correct} wrong, "
                    f"{len(gold) - correct} missed")
    return (f'<section id="doc-{index}"><h2>{_e(doc["title"])}</h2><p class="summary">{summary}.</p>'
            f'<div class="text">{_text(doc, names)}</div><div class="cols"><div><h3>Graph</h3>{_buttons(k_last)}'
            f'{_graph(doc, names, rows, rel_names, passes)}</div>'
            f'<div class="side">{_changes(names, passes, gold, rel_names)}</div></div>'
            f"<h3>Relations</h3>{_table(names, rows, rel_names, passes)}</section>")


def _text(doc, names):
    """The words of the document, each mention in its entity's colour (a mention that overlaps an earlier or
    longer one is shown as part of it)."""
    opens, closes, taken = {}, set(), set()
    mentions = sorted((m["sent_id"], m["pos"][0], -m["pos"][1], e) for e, entity in enumerate(doc["vertexSet"])
                      for m in entity)
    for sent, start, neg_end, e in mentions:
        span = {(sent, w) for w in range(start, -neg_end)}
        if not span & taken:
            taken |= span
            opens[sent, start] = e
            closes.add((sent, -neg_end - 1))
    out = []
    for s, sent in enumerate(doc["sents"]):
        pieces, prev, inside, after_open = [], None, False, False
        for w, word in enumerate(sent):
            glue = (prev is None or word in NO_SPACE_BEFORE or prev in NO_SPACE_AFTER or after_open
                    or (word == '"' and inside))
            after_open = word == '"' and not inside
            inside ^= word == '"'
            piece = _e(word)
            if (s, w) in opens:
                e = opens[s, w]
                kind = doc["vertexSet"][e][0].get("type")
                piece = (f'<mark data-e="{e}" style="background:{_colour(e, True)}" '
                         f'title="{_e(names[e])}{f" ({_e(kind)})" if kind else ""}">{piece}')
            if (s, w) in closes:
                piece += "</mark>"
            pieces.append(("" if glue else " ") + piece)
            prev = word
        out.append("".join(pieces))
    return " ".join(out)


def _buttons(k_last):
    if not k_last:
        return ""
    labels = ["0 (base)"] + [str(k) for k in range(1, k_last)] + [f"{k_last} (final)"]
    return ('<div class="passes">pass: ' + "".join(
        f'<button type="button" data-k="{k}"{" class=sel" if k == k_last else ""}>{label}</button>'
        for k, label in enumerate(labels)) + "</div>")


def _graph(doc, names, rows, rel_names, passes):
    """Entities on a circle; each relation a curved arrow from head to tail, labelled with its name and its score
    at the last pass that predicts it."""
    n = len(names)
    radius = max(120, 30 * n)
    ox, oy = radius + 150, radius + 40  # the centre: room for the names beside the circle, less above and below
    pos = [(ox + radius * math.cos(2 * math.pi * i / n - math.pi / 2),
            oy + radius * math.sin(2 * math.pi * i / n - math.pi / 2)) for i in range(n)]
    k_last = len(passes) - 1
    nodes, taken = [], []  # taken: boxes (x0, y0, x1, y1) that labels keep clear of
    for e, ((x, y), name) in enumerate(zip(pos, names)):
        anchor = "start" if x > ox + 1 else "end" if x < ox - 1 else "middle"
        tx = x + {"start": 14, "end": -14, "middle": 0}[anchor]
        ty = y + (4 if anchor != "middle" else -14 if y < oy else 22)
        short = name if len(name) <= 28 else name[:27] + "…"
        width = 7 * len(short)
        left = {"start": tx, "end": tx - width, "middle": tx - width / 2}[anchor]
        taken += [(x - 10, y - 10, x + 10, y + 10), (left, ty - 11, left + width, ty + 3)]
        nodes.append(f'<g class="node"><circle data-e="{e}" cx="{x:.1f}" cy="{y:.1f}" r="9" '
                     f'fill="{_colour(e, False)}" stroke="#333"><title>{_e(name)}</title></circle>'
                     f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}">{_e(short)}</text></g>')
    edges = []
    for (h, t, r), in_passes, fact in rows:
        (x1, y1), (x2, y2) = pos[h], pos[t]
        dx, dy = x2 - x1, y2 - y1
        # bent to the right of h -> t, so that t -> h takes the other side; ends short of the nodes
        cx, cy = (x1 + x2) / 2 + 0.25 * dy, (y1 + y2) / 2 - 0.25 * dx
        shrink = 11 / (math.hypot(dx, dy) or 1.0)
        score = f" {passes[max(in_passes)][h, t, r]:.2f}" if in_passes else ""
        kind = _kind(in_passes, k_last, fact)
        sign, mark = _marks(kind, fact)
        text = f"{rel_names.get(r, r)}{score}"
        edges.append((kind, (x1, y1, cx, cy, x2, y2), 6.2 * (len(text) + 4 + 6 * (kind == "missed")), (
            f'<g class="rel {kind}{"" if fact is None else " fact" if fact else " nonfact"}" data-h="{h}" '
            f'data-t="{t}" data-r="{_e(r)}" data-passes="{" ".join(map(str, in_passes))}"'
            f'{"" if fact is None else f" data-gold={chr(34)}{int(fact)}{chr(34)}"}>'
            f'<path d="M{x1 + dx * shrink:.1f},{y1 + dy * shrink:.1f} Q{cx:.1f},{cy:.1f} '
            f'{x2 - dx * shrink:.1f},{y2 - dy * shrink:.1f}" marker-end="url(#arrow)"/>'),
            f'<tspan class="sign">{sign}</tspan><tspan class="mark">{mark}</tspan>{_e(text)}</text></g>'))
    # labels of the relations the page opens with are placed first, so that those overlap least
    at = {}
    for i in sorted(range(len(edges)), key=lambda i: ("kept", "added", "missed", "removed", "hidden").index(
            edges[i][0])):
        at[i] = _place_label(edges[i][1], edges[i][2], taken)
    body = "".join(f'{start}<text x="{at[i][0]:.1f}" y="{at[i][1]:.1f}" text-anchor="middle">{end}'
                   for i, (_, _, _, start, end) in enumerate(edges))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * ox:.0f}" height="{2 * oy:.0f}" '
            f'viewBox="0 0 {2 * ox:.0f} {2 * oy:.0f}" role="img" aria-label="relation graph of {_e(doc["title"])}">'
            f'<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>'
            f'{body}{"".join(nodes)}</svg>')


def _place_label(curve, width, taken):
    """Where on its curve (a quadratic Bezier x1, y1, cx, cy, x2, y2) a label goes: the point nearest the middle
    whose box overlaps no box in ``taken`` (else the one that overlaps least); its box is added to ``taken``."""
    x1, y1, cx, cy, x2, y2 = curve
    best = None
    for u in (0.5, 0.42, 0.58, 0.34, 0.66, 0.26, 0.74):
        x = (1 - u) ** 2 * x1 + 2 * (1 - u) * u * cx + u ** 2 * x2
        y = (1 - u) ** 2 * y1 + 2 * (1 - u) * u * cy + u ** 2 * y2 + 4
        box = (x - width / 2, y - 11, x + width / 2, y + 3)
        overlap = sum(max(0, min(box[2], b[2]) - max(box[0], b[0])) * max(0, min(box[3], b[3]) - max(box[1], b[1]))
                      for b in taken)
        if best is None or overlap < best[0]:
            best = (overlap, x, y, box)
        if not overlap:
            break
    taken.append(best[3])
    return best[1], best[2]


def _entity(e, names):
    return f'<span data-e="{e}" style="border-bottom:3px solid {_colour(e, False)}">{_e(names[e])}</span>'


def _table(names, rows, rel_names, passes):
    """One row per relation that any pass predicts or the gold labels hold: its score at each pass, what the
    inference module did with it, and whether the last pass is right about it."""
    k_last = len(passes) - 1
    body = []
    for (h, t, r), in_passes, fact in rows:
        cells = "".join(f'<td class="num on">{passes[k][h, t, r]:.2f}</td>' if k in in_passes else
                        '<td class="num off">&ndash;</td>' for k in range(k_last + 1))
        if not in_passes:
            tag, label = "missed", "not predicted"
        elif 0 not in in_passes:
            tag, label = ("added", f"added by pass {in_passes[0]}") if k_last in in_passes else \
                ("passing", f"passes {', '.join(map(str, in_passes))} only")
        else:
            tag, label = ("base", "base module") if k_last in in_passes else \
                ("removed", f"removed by pass {next(k for k in range(k_last + 1) if k not in in_passes)}")
        verdict = _final((h, t, r), passes[-1], fact)
        gold_attr = "" if fact is None else f' data-gold="{int(fact)}"'
        body.append(f'<tr data-h="{h}" data-t="{t}" data-r="{_e(r)}" data-passes="{" ".join(map(str, in_passes))}"'
                    f"{gold_attr}><td>{_entity(h, names)}</td><td>{_e(rel_names.get(r, r))} <small>{_e(r)}</small>"
                    f'</td><td>{_entity(t, names)}</td>{cells}<td><span class="tag {tag}">{label}</span></td>'
                    f'<td class="{verdict}">{_verdict(verdict)}</td></tr>')
    head = "".join(f"<th>{k}</th>" for k in range(k_last + 1))
    return (f"<table><tr><th>head</th><th>relation</th><th>tail</th>{head}<th>inference</th><th>gold</th></tr>"
            f'{"".join(body)}</table><p class="note">Columns 0..{k_last}: the score at each pass (&ndash;: not '
            f"predicted). Gold: the last pass against the labels.</p>")


def _changes(names, passes, gold, rel_names):
    """Per pass k = 1..K: the relations it adds to the base module's (+) and those of the base module it drops
    (minus), with their scores (at pass k for an added relation, at pass 0 for a dropped one)."""
    if len(passes) == 1:
        return '<p class="note">K = 0: the base module alone, no inference passes.</p>'
    base = passes[0]
    parts = []
    for k, current in enumerate(passes[1:], 1):
        added, removed = sorted(set(current) - set(base)), sorted(set(base) - set(current))
        items = "".join(
            f'<li data-change="{change}" data-k="{k}" data-h="{h}" data-t="{t}" data-r="{_e(r)}">'
            f'<span class="tag {change}">{"+" if change == "added" else "&#8722;"}</span> '
            f'{_marks("kept", None if gold is None else (h, t, r) in gold)[1]}'
            f"{_entity(h, names)} &rarr; {_e(rel_names.get(r, r))} &rarr; {_entity(t, names)} "
            f"<small>({scores[h, t, r]:.2f})</small></li>"
            for change, triples, scores in (("added", added, current), ("removed", removed, base))
            for h, t, r in triples)
        parts.append(f"<h4>pass {k}: {len(added)} added, {len(removed)} removed</h4>"
                     f'{f"<ul class=changes>{items}</ul>" if items else ""}')
    return ('<h3>What the inference module changed</h3><p class="note">Against the base module (pass 0). '
            f"{'&#10003;: a gold relation, &#10007;: not one. ' if gold is not None else ''}Scores: at that pass "
            f"for an added relation, at pass 0 for a removed one.</p>{''.join(parts)}")
