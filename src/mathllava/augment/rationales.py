"""Rationales, the fifth augmentation: per seed question a step-by-step solution that ends in one
final line, `The answer is X.`, which the benchmarks' own extraction reads (MathVista's quick rule,
Math-V's answer phrase). X is what a direct answer would say: the option letter for multiple choice,
else the value.

- Synthetic scenes compute their steps from the scene (as MAVIS does): `scene_rationale(row)`.
- Other images get them from the augment engine's model generators (`prompts.rationale`).
- Every rationale is verified against the seed's known answer under the benchmark's answer-matching
  rules (`verify`): a last line that is not a final-answer line is dropped as `malformed_rationale`, a
  wrong final answer as `wrong_final_answer`, a bare answer with no step as `no_steps`.
"""

from __future__ import annotations

import json
import math
import re

from ..evaluation import mathvista
from ..formats import target_text

FINAL_LINE = re.compile(r"^The answer is (\S.*?)\.?$")


def final_line(answer: str, question_type: str, choices: list[str] | None) -> str:
    return f"The answer is {target_text(answer, question_type, choices)}."


def verify(problem: dict, text: str) -> str | None:
    """None when `text` is a rationale whose final line gives `problem`'s answer (MathVista's rules:
    quick extraction, then normalisation per answer type, then equality); else the drop reason."""
    lines = [line.strip() for line in str(text or "").strip().splitlines() if line.strip()]
    if not lines or not FINAL_LINE.fullmatch(lines[-1]):
        return "malformed_rationale"
    if len(lines) < 2:
        return "no_steps"
    extraction, _method = mathvista.extract_answer(lines[-1], problem["question_type"], problem["answer_type"],
                                                   problem["choices"])
    _prediction, right = mathvista.score_problem(problem, extraction)
    return None if right else "wrong_final_answer"


def parse_reply(reply: str) -> str:
    """A model's rationale as training text: surrounding fences and blank lines removed, one step a line."""
    text = re.sub(r"^```\w*\s*|```\s*$", "", str(reply or "").strip())
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


# ------------------------------------------------------------------ steps computed from a scene


def _mentioned(question: str, names) -> list[str]:
    """The names the question mentions, in the order it mentions them (whole words)."""
    found = []
    for name in set(names):
        match = re.search(rf"\b{re.escape(name)}s?\b", question)
        if match:
            found.append((match.start(), name))
    return [name for _, name in sorted(found)]


def _listing(pairs) -> str:
    return ", ".join(f"{a} {b}" for a, b in pairs)


def _counting(n: int) -> str:
    return ", ".join(str(i) for i in range(1, n + 1)) if n else "none"


def _bar(s, key, q):
    cats, vals = s["categories"], s["values"]
    steps = [f"The bars show {_listing(zip(cats, vals))}."]
    if key == "highest":
        value = cats[vals.index(max(vals))]
        steps.append(f"The largest value is {max(vals)}, for {value}.")
    elif key == "lowest":
        value = cats[vals.index(min(vals))]
        steps.append(f"The smallest value is {min(vals)}, for {value}.")
    elif key == "count":
        value = len(cats)
        steps.append(f"Counting the bars: {_counting(value)}.")
    elif key == "value":
        cat = _mentioned(q, cats)[0]
        value = vals[cats.index(cat)]
        steps.append(f"The bar of {cat} reaches {value}.")
    elif key == "range":
        value = max(vals) - min(vals)
        steps += [f"The highest value is {max(vals)} and the lowest is {min(vals)}.",
                  f"{max(vals)} - {min(vals)} = {value}."]
    elif key == "total":
        value = sum(vals)
        steps.append(f"{' + '.join(str(v) for v in vals)} = {value}.")
    return steps, value


def _pie(s, key, q):
    cols, pcts = s["colours"], s["percents"]
    steps = [f"The slices are {', '.join(f'{c} {p}%' for c, p in zip(cols, pcts))}."]
    if key == "slices":
        value = len(cols)
        steps.append(f"Counting the slices: {_counting(value)}.")
    elif key == "share":
        col = _mentioned(q, cols)[0]
        value = pcts[cols.index(col)]
        steps.append(f"The {col} slice is labelled {value}%.")
    elif key == "rest":
        col = _mentioned(q, cols)[0]
        p = pcts[cols.index(col)]
        value = 100 - p
        steps.append(f"The whole pie is 100% and the {col} slice is {p}%, so 100 - {p} = {value}.")
    elif key == "largest":
        value = cols[pcts.index(max(pcts))]
        steps.append(f"The largest share is {max(pcts)}%, the {value} slice.")
    return steps, value


def _line(s, key, q):
    yrs, vals = s["years"], s["values"]
    steps = [f"The line shows {', '.join(f'{y}: {v}' for y, v in zip(yrs, vals))}."]
    if key == "peak":
        value = yrs[vals.index(max(vals))]
        steps.append(f"The highest value is {max(vals)}, in {value}.")
    elif key == "first":
        value = vals[0]
        steps.append(f"The first point, {yrs[0]}, is at {value}.")
    elif key == "rises":
        ups = [f"{yrs[i]} to {yrs[i + 1]}" for i in range(len(vals) - 1) if vals[i + 1] > vals[i]]
        value = len(ups)
        steps.append(f"The value goes up from {', '.join(ups)}: {value} times." if ups
                     else "The value never goes up from one year to the next: 0 times.")
    elif key == "points":
        value = len(yrs)
        steps.append(f"Counting the years: {_counting(value)}.")
    return steps, value


def _triangle(s, key, q):
    a, b, c = s["angles"]
    if key == "third_angle":
        return ["The angles of a triangle add up to 180°.", f"180 - {a} - {b} = {180 - a - b}."], 180 - a - b
    if key == "kind":
        top = max(a, b, c)
        word, kind = ("less than", "acute") if top < 90 else (("equal to", "right") if top == 90 else ("more than", "obtuse"))
        return [f"The angles are {a}°, {b}° and {c}°.", f"The largest, {top}°, is {word} 90°, so the triangle is {kind}."], kind
    if key == "angle_sum":
        return ["Triangle ABC has three interior angles.", "The interior angles of any triangle add up to 180°."], 180
    if key == "exterior":
        return ["The exterior angle at C equals the sum of the two interior angles at A and B.",
                f"{a} + {b} = {a + b}."], a + b
    raise KeyError(key)


def _rectangle(s, key, q):
    w, h = s["width"], s["height"]
    steps = [f"The sides of the rectangle are {w} and {h}."]
    if key == "area":
        value = w * h
        steps.append(f"Area = width × height = {w} × {h} = {value}.")
    elif key == "perimeter":
        value = 2 * (w + h)
        steps.append(f"Perimeter = 2 × ({w} + {h}) = 2 × {w + h} = {value}.")
    elif key == "diagonal":
        value = round(math.hypot(w, h), 1)
        steps.append(f"Diagonal = √({w}² + {h}²) = √{w * w + h * h} ≈ {value}.")
    elif key == "shape":
        value = "square" if w == h else "rectangle"
        steps.append("The sides are equal, so it is a square." if w == h
                     else "Two sides differ in length, so it is a rectangle.")
    return steps, value


def _counting_scene(s, key, q):
    shape, colour, n, k = s["shape"], s["colour"], s["count"], s["add"]
    grey = len(s["distractor_cells"])
    if key == "count":
        return [f"Count the {colour} {shape}s one by one: {_counting(n)}.", f"There are {n}."], n
    if key == "add":
        return [f"Count the {colour} {shape}s: {_counting(n)}, so there are {n}.",
                f"Adding {k}: {n} + {k} = {n + k}."], n + k
    if key == "grey":
        return [f"Count the grey {s['distractor_shape']}s one by one: {_counting(grey)}.", f"There are {grey}."], grey
    if key == "colour":
        return [f"The coloured shapes are {shape}s.", f"They are all {colour}."], colour
    raise KeyError(key)


def _clock(s, key, q):
    h, m, k = s["hour"], s["minute"], s["delta"]
    short = f"The short hand points at {h}" + (" (past it by the minutes)." if m else ".")
    long = f"The long hand points at {m // 5 or 12}, and each number on the dial is 5 minutes: {m // 5} × 5 = {m}."
    if key == "hour":
        return [short, f"So the hour is {h}."], h
    if key == "minute":
        return [long, f"That is {m} minutes past the hour."], m
    if key == "time":
        return [short, long, f"The time is {h}:{m:02d}."], f"{h}:{m:02d}"
    if key == "later":
        total = h + k
        later = total - 12 if total > 12 else total
        return [short, f"{h} + {k} = {total}" + (f", and on a 12-hour clock {total} - 12 = {later}." if total > 12
                                                  else ".")], later
    raise KeyError(key)


def _table(s, key, q):
    items, prices, qty = s["items"], s["prices"], s["qty"]
    named = _mentioned(q, items)
    steps = [f"The table lists {', '.join(f'{i} ${p}' for i, p in zip(items, prices))}."]
    if key == "price":
        value = prices[items.index(named[0])]
        steps.append(f"The {named[0]} costs ${value}.")
    elif key == "pair":
        pa, pb = (prices[items.index(x)] for x in named[:2])
        value = pa + pb
        steps.append(f"A {named[0]} costs ${pa} and a {named[1]} costs ${pb}: {pa} + {pb} = {value}.")
    elif key == "qty":
        p = prices[items.index(named[0])]
        value = qty * p
        steps.append(f"A {named[0]} costs ${p}, so {qty} of them cost {qty} × {p} = {value}.")
    elif key == "rows":
        value = len(items)
        steps.append(f"Counting the items: {_counting(value)}.")
    elif key == "cheapest":
        value = items[prices.index(min(prices))]
        steps.append(f"The lowest price is ${min(prices)}, for the {value}.")
    return steps, value


def _cycle(s, key, q):
    stages, name = s["stages"], s["cycle"]
    steps = [f"The arrows go {' → '.join(stages + [stages[0]])}."]
    if key in ("next", "next2"):
        i = stages.index(re.search(r"(?:after|follows|Starting at) (\w+)", q).group(1))
        value = stages[(i + 1) % len(stages)]
        steps.append(f"From {stages[i]} one arrow leads to {value}.")
        if key == "next2":
            value = stages[(i + 2) % len(stages)]
            steps.append(f"A second arrow leads to {value}.")
    elif key == "stages":
        value = len(stages)
        steps.append(f"Counting the stages: {_counting(value)}.")
    elif key == "topic":
        value = f"{name} life cycle" if name != "water" else "water cycle"
        steps.append(f"The stages {', '.join(stages)} form the {value}.")
    return steps, value


def _chain(s, key, q):
    chain = s["chain"]
    steps = [f"The arrows go {' → '.join(chain)}."]
    if key == "producer":
        value = chain[0]
        steps.append(f"A food chain starts with the producer, which makes its own food: the {value}.")
    elif key == "top":
        value = chain[-1]
        steps.append(f"No arrow leaves the {value}, so it is at the top.")
    elif key == "eaten_by":
        prey = re.search(r"(?:eats|feeds on) the (\w+)", q).group(1)
        value = chain[chain.index(prey) + 1]
        steps.append(f"The arrow from the {prey} points to the {value}, so the {value} eats the {prey}.")
    elif key == "length":
        value = len(chain)
        steps.append(f"Counting the organisms: {_counting(value)}.")
    return steps, value


def _shapes(s, key, q):
    objs = s["objects"]
    steps = ["The objects are " + ", ".join(f"a {o['size']} {o['colour']} {o['shape']}" for o in objs) + "."]
    if key == "total":
        value = len(objs)
        steps.append(f"Counting them: {_counting(value)}.")
    elif key in ("by_colour", "subtract"):
        colour = _mentioned(q, [o["colour"] for o in objs])[0]
        value = sum(o["colour"] == colour for o in objs)
        steps.append(f"The {colour} ones: {_counting(value)}.")
        if key == "subtract":
            steps.append(f"{len(objs)} - {value} = {len(objs) - value}.")
            value = len(objs) - value
    elif key == "by_shape":
        shape = _mentioned(q, ["circle", "square", "triangle"])[0]
        value = sum(o["shape"] == shape for o in objs)
        steps.append(f"The {shape}s: {_counting(value)}.")
    elif key == "large":
        value = sum(o["size"] == "large" for o in objs)
        steps.append(f"The large ones: {_counting(value)}.")
    elif key in ("colour_of", "shape_of"):
        value = objs[0]["colour" if key == "colour_of" else "shape"]
        steps.append(f"There is one object, and it is {value}.")
    return steps, value


def _spatial(s, key, q):
    objs = sorted(s["objects"], key=lambda o: o["x"])
    steps = ["From left to right: " + ", ".join(f"the {o['colour']} {o['shape']}" for o in objs) + "."]
    if key == "leftmost":
        value = objs[0]["colour"]
        steps.append(f"The first one is {value}.")
    elif key == "rightmost":
        value = objs[-1]["colour"]
        steps.append(f"The last one is {value}.")
    elif key == "left_of":
        first, second = _mentioned(q, [o["colour"] for o in objs])[:2]
        order = [o["colour"] for o in objs]
        before = order.index(first) < order.index(second)
        value = "Yes" if before else "No"
        steps.append(f"The {first} one comes {'before' if before else 'after'} the {second} one.")
    elif key == "count":
        value = len(objs)
        steps.append(f"Counting them: {_counting(value)}.")
    return steps, value


_STEPS = {"synth-barchart": _bar, "synth-piechart": _pie, "synth-linechart": _line, "synth-triangle": _triangle,
          "synth-rectangle": _rectangle, "synth-counting": _counting_scene, "synth-clock": _clock,
          "synth-pricetable": _table, "synth-lifecycle": _cycle, "synth-foodchain": _chain, "synth-shapes": _shapes,
          "synth-spatial": _spatial}


def scene_rationale(row: dict) -> str | None:
    """The worked solution of a synthetic row's question, computed from its scene: the steps and the
    final line both come from the scene, never from the row's stored answer (so `verify` checks the
    computation); None when the row has no scene or asks what the steps cannot explain."""
    scene = row.get("scene")
    scene = json.loads(scene) if isinstance(scene, str) else scene
    if not isinstance(scene, dict) or scene.get("template") not in _STEPS:
        return None
    choices = row.get("choices")
    choices = json.loads(choices) if isinstance(choices, str) else None   # a missing value may be NaN
    try:
        steps, value = _STEPS[scene["template"]](scene, row.get("question_key"), str(row["question"]))
    except (IndexError, ValueError, AttributeError, KeyError, UnboundLocalError):
        return None   # the question names nothing the scene holds, or a kind of question with no steps here
    value = str(value)
    if row["question_type"] == "multi_choice" and choices and value in choices:
        steps.append(f"{value} is option ({target_text(value, 'multi_choice', choices)}).")
    return "\n".join(steps + [final_line(value, row["question_type"], choices)])
