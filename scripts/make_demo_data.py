"""Write a small synthetic DocRED-format dataset for the demo (no real data needed).

Each document describes a made-up world: people born in cities and working for organisations, organisations
based in cities, cities in countries. Every such fact is stated in one sentence of its own. One more fact
per person and per organisation is never stated and follows only from two stated ones, the kind of
relational inference the inference module is for:

    country of citizenship (P27) of a person = the country (P17) of the city they were born in (P19)
    country (P17) of an organisation         = the country (P17) of the city it is based in (P159)

Their labels carry "inferred": true (stated facts "inferred": false), and their evidence is the two
sentences they follow from; scripts/demo_report.py scores recall on the two kinds apart. No sentence
mentions a person or organisation together with a country, so the country of an inferred fact never
shares a sentence with its head. Sentences are shuffled. Names are random syllable strings, and no two
names of a document share a syllable, so nothing can be memorised and no two entities look alike.

With --gap N the facts are no longer shuffled together: every sentence that states a first hop (born in,
based in, worked for) comes first, then filler sentences of at least N words that mention no entity, then
the cities' countries. An encoder window of at most N tokens (train.py --encoder_window; each filler word is
one word piece of the bundled tokenizer) then never holds both facts a never-stated one follows from, as the
512-token window does not in a document longer than that: the encoder cannot compose them, the entity
representations and the inference module still can.

With --assign random (default) tails are drawn uniformly, so in many documents one candidate (a city, an
employer) is the tail of most heads, and a model can score well by predicting the most frequent candidate
without telling apart which head goes with which tail. --assign even spreads tails evenly over the
candidates, which leaves no such shortcut.

    python scripts/make_demo_data.py --out dataset/demo [--train 240 --dev 40 --test 40 --seed 1] [--gap 64]
"""
import argparse
import json
import os
import random

# Syllables that the bundled (BERT uncased) tokenizer knows as word pieces both at the start of a word and
# inside one; frequent short English words are left out.
SYLLABLES = ["bo", "bu", "du", "fa", "fe", "fi", "ga", "ge", "gu", "ka", "ke", "ki", "ku", "li", "lu", "mu", "nu",
             "pi", "pu", "ra", "ri", "ru", "su", "tu", "va", "ve", "vi", "vo", "za", "ze", "zu", "bal", "bel", "dal",
             "dar", "del", "din", "dun", "fen", "gal", "gel", "gil", "kel", "lin", "mal", "mel", "mer", "mir", "mon",
             "nan", "pal", "pol", "ral", "ren", "ron", "sal", "sar", "sel", "sol", "sul", "tal", "tel", "tor", "val",
             "var", "vin", "zen"]
ORG_KINDS = ["Corp", "Group", "Institute"]
INFERRED = {"P27": "P19", "P17": "P159"}  # inferred relation of a PER / ORG head: its stated first hop
# Filler for --gap: no entity, nothing about places or people's relations; every word is one word piece of the
# bundled (BERT uncased) tokenizer, so N words are N tokens.
FILLER = ["little else is known about those early years", "some of the old records were lost in a fire",
          "the weather was mild for most of that year", "the roads were often closed during the long winter",
          "most of the letters from that time are still kept", "there is no other record of the family",
          "the work went on slowly over the next few years", "much of this account comes from a single source"]


def spread(rng, n, m):
    """n choices among m candidates, each used floor(n/m) or ceil(n/m) times, in random order."""
    out = [i % m for i in range(n)]
    rng.shuffle(out)
    return out


def choose(rng, n, m, assign):
    """n choices among m candidates: uniform ("random") or spread evenly ("even")."""
    return spread(rng, n, m) if assign == "even" else [rng.randrange(m) for _ in range(n)]


def make_doc(rng, index, countries=2, cities=2, orgs=2, people=2, assign="random", gap=0):
    """One document: sentences (token lists), vertexSet and labels, in the DocRED JSON layout.

    assign: how each head picks its tail (city of a person or organisation, employer, country of a city beyond
    the first one per country): "random" (uniform, so one candidate is often the tail of most heads), or
    "even" (every candidate used floor or ceil of heads / candidates times, so none is favoured).
    gap: 0 shuffles all sentences; N > 0 puts the first hops first, then at least N words of filler, then the
    cities' countries (each block shuffled)."""
    if countries < 1 or cities < countries or orgs < 1 or people < 1 or gap < 0:
        raise ValueError("need countries >= 1, cities >= countries, orgs >= 1, people >= 1 and gap >= 0")
    if assign not in ("random", "even"):
        raise ValueError(f"assign must be 'random' or 'even', got {assign!r}")
    used = set()

    def name(parts):
        """A capitalised name of `parts` syllables, none of them used before in this document."""
        syllables = rng.sample([s for s in SYLLABLES if s not in used], parts)
        used.update(syllables)
        return "".join(syllables).capitalize()

    country_names = [name(3) for _ in range(countries)]
    # every country gets a city (so every entity is mentioned); further cities go where `assign` puts them
    city_country = spread(rng, countries, countries) + choose(rng, cities - countries, countries, assign)
    city_names = [name(2) for _ in range(cities)]
    org_city = choose(rng, orgs, cities, assign)
    org_names = [f"{name(2)} {rng.choice(ORG_KINDS)}" for _ in range(orgs)]
    person_city, person_org = choose(rng, people, cities, assign), choose(rng, people, orgs, assign)
    person_names = [f"{name(2)} {name(2)}" for _ in range(people)]

    entities, sents, labels = [], [], []

    def entity(text, kind):
        entities.append({"text": text, "type": kind, "mentions": []})
        return len(entities) - 1

    country_ids = [entity(c, "LOC") for c in country_names]
    city_ids = [entity(c, "LOC") for c in city_names]
    org_ids = [entity(o, "ORG") for o in org_names]
    person_ids = [entity(p, "PER") for p in person_names]

    def say(*pieces):
        """pieces: plain strings or entity ids; records mentions with their token spans. Returns the sentence id."""
        tokens = []
        for piece in pieces:
            if isinstance(piece, int):
                words = entities[piece]["text"].split()
                entities[piece]["mentions"].append((len(sents), len(tokens), len(tokens) + len(words)))
                tokens += words
            else:
                tokens += piece.split()
        sents.append(tokens + ["."])
        return len(sents) - 1

    def fact(h, t, r, evidence, inferred=False):
        labels.append({"h": h, "t": t, "r": r, "evidence": evidence, "inferred": inferred})

    city_sent = []
    for c, k in enumerate(city_country):
        city_sent.append(say(city_ids[c], "is a city in", country_ids[k]))
        fact(city_ids[c], country_ids[k], "P17", [city_sent[c]])
    for o, c in enumerate(org_city):
        s = say(org_ids[o], "is based in", city_ids[c])
        fact(org_ids[o], city_ids[c], "P159", [s])
        fact(org_ids[o], country_ids[city_country[c]], "P17", [s, city_sent[c]], inferred=True)
    for p, (c, o) in enumerate(zip(person_city, person_org)):
        s = say(person_ids[p], "was born in", city_ids[c])
        fact(person_ids[p], city_ids[c], "P19", [s])
        fact(person_ids[p], country_ids[city_country[c]], "P27", [s, city_sent[c]], inferred=True)
        s = say("Later ,", person_ids[p], "worked for", org_ids[o])
        fact(person_ids[p], org_ids[o], "P108", [s])

    if gap:
        first_hops = list(range(len(city_sent), len(sents)))
        rng.shuffle(first_hops)
        rng.shuffle(city_sent)
        filler, words = [], 0
        while words < gap:
            text = rng.choice(FILLER)
            filler.append(say(text.capitalize()))
            words += len(text.split())
        order = first_hops + filler + city_sent
    else:
        order = list(range(len(sents)))
        rng.shuffle(order)
    remap = {old: new for new, old in enumerate(order)}
    sents = [sents[i] for i in order]
    for lab in labels:
        lab["evidence"] = sorted(remap[s] for s in lab["evidence"])
    vertex_set = [[{"name": e["text"], "pos": [a, b], "sent_id": remap[s], "type": e["type"]}
                   for s, a, b in e["mentions"]] for e in entities]
    return {"title": f"Demo document {index}", "sents": sents, "vertexSet": vertex_set, "labels": labels}


def make_splits(sizes, seed=1, **counts):
    """{split: documents} for sizes {split: n} (in that order; titles numbered across splits)."""
    rng = random.Random(seed)
    out, start = {}, 0
    for split, n in sizes.items():
        out[split] = [make_doc(rng, start + i, **counts) for i in range(n)]
        start += n
    return out


def write_if_changed(path, data):
    """Replace `path` by `data` in one step (a reader never sees half a file); leave it alone if it holds them."""
    try:
        with open(path, "rb") as fh:
            if fh.read() == data:
                return
    except OSError:
        pass
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="dataset/demo")
    p.add_argument("--train", type=int, default=240)
    p.add_argument("--dev", type=int, default=40)
    p.add_argument("--test", type=int, default=40)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--countries", type=int, default=2, help="countries per document")
    p.add_argument("--cities", type=int, default=2, help="cities per document (at least --countries)")
    p.add_argument("--orgs", type=int, default=2, help="organisations per document")
    p.add_argument("--people", type=int, default=2, help="people per document")
    p.add_argument("--assign", choices=["random", "even"], default="random",
                   help="tails drawn uniformly, or spread evenly over the candidates (see make_doc)")
    p.add_argument("--gap", type=int, default=0,
                   help="first hops first, at least this many filler words, then the cities' countries "
                        "(0 = all sentences shuffled)")
    args = p.parse_args(argv)
    counts = {k: getattr(args, k) for k in ("countries", "cities", "orgs", "people", "assign", "gap")}
    try:
        docs = make_splits({"train": args.train, "dev": args.dev, "test": args.test}, args.seed, **counts)
    except ValueError as e:
        p.error(str(e))
    os.makedirs(args.out, exist_ok=True)
    for split, split_docs in docs.items():
        if split == "test":
            for d in split_docs:
                del d["labels"]  # like DocRED's test.json: predicted, not scored
        write_if_changed(os.path.join(args.out, f"{split}.json"), json.dumps(split_docs).encode("utf-8"))
    print(f"wrote {args.train}/{args.dev}/{args.test} documents to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
