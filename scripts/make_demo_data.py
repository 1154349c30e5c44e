"""Write a small synthetic DocRED-format dataset for the demo (no real data needed).

Each document describes a made-up world: people born in / working for organisations based in cities of
countries. Some facts are stated in one sentence; others (country of citizenship, an organisation's
country) are never stated and follow from two stated facts, which is the kind of relational inference
the inference module is for. Names are random syllable strings, so nothing can be memorised.

    python scripts/make_demo_data.py --out dataset/demo [--train 160 --dev 40 --test 40 --seed 1]
"""
import argparse
import json
import os
import random

SYLLABLES = ["ka", "lo", "mer", "vin", "ta", "ros", "el", "dun", "sa", "bri", "no", "ul", "gar", "thi", "pe", "wen"]


def name(rng, parts):
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


def make_doc(rng, index):
    """One document: sentences (token lists), vertexSet and labels, in the DocRED JSON layout."""
    countries = [name(rng, 3) for _ in range(2)]
    # (city, country index); the first two cities cover both countries so every entity is mentioned
    cities = [(name(rng, 2), k) for k in (0, 1, rng.randrange(2))]
    orgs = [(name(rng, 2) + " " + rng.choice(["Corp", "Group", "Institute"]), rng.randrange(3)) for _ in range(2)]
    people = [(name(rng, 2) + " " + name(rng, 3), rng.randrange(3), rng.randrange(2)) for _ in range(3)]

    entities, sents, labels = [], [], []

    def entity(text, kind):
        entities.append({"text": text, "type": kind, "mentions": []})
        return len(entities) - 1

    country_ids = [entity(c, "LOC") for c in countries]
    city_ids = [entity(c, "LOC") for c, _ in cities]
    org_ids = [entity(o, "ORG") for o, _ in orgs]
    person_ids = [entity(p, "PER") for p, _, _ in people]

    def say(*pieces):
        """pieces: plain strings or entity ids; records mentions with their token spans."""
        tokens = []
        for piece in pieces:
            if isinstance(piece, int):
                words = entities[piece]["text"].split()
                entities[piece]["mentions"].append((len(sents), len(tokens), len(tokens) + len(words)))
                tokens += words
            else:
                tokens += piece.split()
        sents.append(tokens + ["."])

    def fact(h, t, r):
        labels.append({"h": h, "t": t, "r": r, "evidence": []})

    for (_, k), cid in zip(cities, city_ids):
        say(cid, "is a city in", country_ids[k])
        fact(cid, country_ids[k], "P17")
    for (_, c), oid in zip(orgs, org_ids):
        say(oid, "is based in", city_ids[c])
        fact(oid, city_ids[c], "P159")
        fact(oid, country_ids[cities[c][1]], "P17")  # inferred: never stated
    for (_, c, o), pid in zip(people, person_ids):
        say(pid, "was born in", city_ids[c])
        fact(pid, city_ids[c], "P19")
        fact(pid, country_ids[cities[c][1]], "P27")  # inferred: never stated
        say("Later ,", pid, "worked for", org_ids[o])
        fact(pid, org_ids[o], "P108")
    order = list(range(len(sents)))
    rng.shuffle(order)
    remap = {old: new for new, old in enumerate(order)}
    sents = [sents[i] for i in order]
    vertex_set = [[{"name": e["text"], "pos": [a, b], "sent_id": remap[s], "type": e["type"]}
                   for s, a, b in e["mentions"]] for e in entities]
    return {"title": f"Demo document {index}", "sents": sents, "vertexSet": vertex_set, "labels": labels}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="dataset/demo")
    p.add_argument("--train", type=int, default=160)
    p.add_argument("--dev", type=int, default=40)
    p.add_argument("--test", type=int, default=40)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)
    start = 0
    for split, n in (("train", args.train), ("dev", args.dev), ("test", args.test)):
        docs = [make_doc(rng, start + i) for i in range(n)]
        start += n
        if split == "test":
            for d in docs:
                del d["labels"]  # like DocRED's test.json: predicted, not scored
        with open(os.path.join(args.out, f"{split}.json"), "w") as fh:
            json.dump(docs, fh)
    print(f"wrote {args.train}/{args.dev}/{args.test} documents to {args.out}")


if __name__ == "__main__":
    main()
