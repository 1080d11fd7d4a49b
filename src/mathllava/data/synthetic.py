"""Procedural multimodal math data: rendered images with exact ground truth.

Each scene is a JSON-serialisable dict kept next to the image, so new questions about the same
image can be asked later with verified answers (the augmentation stage does this). Complexity
follows from the scene (number of elements and reasoning steps); a configured share of images is
degraded (blur, noise, heavy JPEG, tiny resolution) and labelled unclear.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pydantic import Field, field_validator

from ..settings import Strict

COLOURS = {
    "red": (220, 40, 40),
    "blue": (40, 80, 220),
    "green": (40, 170, 60),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 20),
}
COLOUR_NAMES = list(COLOURS)
SHAPES = ["circle", "square", "triangle"]
TASKS = {
    "FQA": "figure question answering",
    "GPS": "geometry problem solving",
    "MWP": "math word problem",
    "TQA": "textbook question answering",
    "VQA": "visual question answering",
}
CONTEXTS = {
    "FQA": "bar chart",
    "GPS": "geometry diagram",
    "MWP": "abstract scene",
    "TQA": "scientific figure",
    "VQA": "synthetic scene",
}
DEGRADATIONS = ("blur", "noise", "jpeg", "tiny")


@dataclass
class QuestionSpec:
    """One question about a scene with its exact answer. `phrasings[0]` is the canonical wording,
    the others ask the same thing differently; `short` leans on the image for what it leaves out."""

    key: str
    phrasings: list[str]
    short: str
    answer: str
    answer_type: str
    question_type: str
    skills: list[str]
    steps: int = 1
    choices: list[str] | None = None
    precision: int | None = None
    unit: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SyntheticItem:
    id: str
    source: str
    task: str
    image: str
    complexity: int
    clear: bool
    degradation: str | None
    scene: dict
    question: QuestionSpec
    context: str = ""
    extra_questions: list[QuestionSpec] = field(default_factory=list)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


def _mc(rng: random.Random, correct: str, pool: list[str], n: int = 4) -> tuple[list[str], str]:
    """Choices that contain the correct answer, shuffled; returns (choices, correct text)."""
    others = [p for p in dict.fromkeys(pool) if p != correct]
    rng.shuffle(others)
    choices = [correct] + others[: n - 1]
    rng.shuffle(choices)
    return choices, correct


# --------------------------------------------------------------------------- templates
# Each template: scene(rng, level) -> dict, render(scene, size) -> Image, questions(scene) -> [QuestionSpec]

FRUITS = ["apples", "pears", "plums", "kiwis", "mangos", "grapes", "limes", "figs"]
YEARS = [str(y) for y in range(2015, 2025)]


def _bar_scene(rng: random.Random, level: int) -> dict:
    n = [2, 3, 5, 7][level]
    cats = rng.sample(FRUITS, n)
    values = rng.sample(range(1, 20), n)
    return {"categories": cats, "values": values, "colours": [rng.choice(COLOUR_NAMES) for _ in cats]}


def _bar_render(scene: dict, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    n = len(scene["values"])
    left, bottom, top = size * 0.12, size * 0.85, size * 0.08
    width = (size * 0.84) / n
    vmax = 20
    d.line([(left, top), (left, bottom), (size * 0.97, bottom)], fill="black", width=2)
    font = _font(max(9, size // 22))
    for i, (cat, val, col) in enumerate(zip(scene["categories"], scene["values"], scene["colours"])):
        x0 = left + i * width + width * 0.15
        x1 = left + (i + 1) * width - width * 0.15
        y0 = bottom - (bottom - top) * val / vmax
        d.rectangle([x0, y0, x1, bottom], fill=COLOURS[col], outline="black")
        d.text((x0, y0 - size * 0.06), str(val), fill="black", font=font)
        d.text((x0, bottom + 3), cat[:5], fill="black", font=font)
    return img


def _bar_questions(scene: dict, rng: random.Random) -> list[QuestionSpec]:
    cats, vals = scene["categories"], scene["values"]
    hi = cats[vals.index(max(vals))]
    lo = cats[vals.index(min(vals))]
    pick = rng.randrange(len(cats))
    choices_hi, _ = _mc(rng, hi, cats)
    choices_lo, _ = _mc(rng, lo, cats)
    specs = [
        QuestionSpec("highest", [
            "Which fruit has the highest value in the bar chart?",
            "In this bar chart, which fruit's bar is the tallest?",
            "Looking at the bars, which fruit reaches the largest value?"],
            "Which one is highest?", hi, "text", "multi_choice", ["statistical reasoning"], 1, choices_hi),
        QuestionSpec("lowest", [
            "Which fruit has the lowest value in the bar chart?",
            "In this bar chart, which fruit's bar is the shortest?"],
            "Which one is lowest?", lo, "text", "multi_choice", ["statistical reasoning"], 1, choices_lo),
        QuestionSpec("count", [
            "How many bars are in the chart?", "How many fruits does the bar chart compare?"],
            "How many bars?", str(len(cats)), "integer", "free_form", ["statistical reasoning"], 1),
        QuestionSpec("value", [
            f"What is the value of {cats[pick]} in the bar chart?",
            f"According to the chart, how much is recorded for {cats[pick]}?"],
            f"What is {cats[pick]}?", str(vals[pick]), "integer", "free_form", ["statistical reasoning"], 1),
        QuestionSpec("range", [
            "What is the difference between the highest and the lowest value in the bar chart?",
            "By how much does the tallest bar exceed the shortest bar?"],
            "What is the difference between the highest and lowest?", str(max(vals) - min(vals)),
            "integer", "free_form", ["statistical reasoning", "arithmetic reasoning"], 2),
        QuestionSpec("total", [
            "What is the sum of all values in the bar chart?",
            "If you add up every bar in the chart, what total do you get?"],
            "What is the total?", str(sum(vals)), "integer", "free_form",
            ["statistical reasoning", "arithmetic reasoning"], max(2, len(vals) - 1)),
    ]
    return specs


def _pie_scene(rng: random.Random, level: int) -> dict:
    n = [2, 3, 4, 6][level]
    cuts = sorted(rng.sample(range(1, 20), n - 1))
    parts = [b - a for a, b in zip([0] + cuts, cuts + [20])]
    return {"colours": rng.sample(COLOUR_NAMES, n), "percents": [p * 5 for p in parts]}


def _pie_render(scene: dict, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    box = [size * 0.1, size * 0.1, size * 0.9, size * 0.9]
    start = -90.0
    font = _font(max(9, size // 20))
    for col, pct in zip(scene["colours"], scene["percents"]):
        end = start + 360 * pct / 100
        d.pieslice(box, start, end, fill=COLOURS[col], outline="white")
        mid = math.radians((start + end) / 2)
        d.text((size / 2 + size * 0.25 * math.cos(mid) - 8, size / 2 + size * 0.25 * math.sin(mid) - 6),
               f"{pct}%", fill="black", font=font)
        start = end
    return img


def _pie_questions(scene: dict, rng: random.Random) -> list[QuestionSpec]:
    cols, pcts = scene["colours"], scene["percents"]
    big = cols[pcts.index(max(pcts))] if pcts.count(max(pcts)) == 1 else None
    pick = rng.randrange(len(cols))
    specs = [
        QuestionSpec("slices", ["How many slices does the pie chart have?", "Into how many parts is the pie chart divided?"],
                     "How many slices?", str(len(cols)), "integer", "free_form", ["statistical reasoning"], 1),
        QuestionSpec("share", [f"What percentage does the {cols[pick]} slice represent?",
                               f"According to the pie chart, what share is {cols[pick]}?"],
                     f"What percentage is {cols[pick]}?", str(pcts[pick]), "integer", "free_form",
                     ["statistical reasoning"], 1, unit="%"),
        QuestionSpec("rest", [f"What percentage of the pie chart is not {cols[pick]}?",
                              f"How much of the whole, in percent, lies outside the {cols[pick]} slice?"],
                     f"How much is not {cols[pick]}?", str(100 - pcts[pick]), "integer", "free_form",
                     ["statistical reasoning", "arithmetic reasoning"], 2, unit="%"),
    ]
    if big:
        choices, _ = _mc(rng, big, cols + COLOUR_NAMES)
        specs.insert(0, QuestionSpec("largest", ["Which colour is the largest slice of the pie chart?",
                                                 "In the pie chart, which colour covers the biggest share?"],
                                     "Which colour is largest?", big, "text", "multi_choice",
                                     ["statistical reasoning"], 1, choices))
    return specs


def _line_scene(rng: random.Random, level: int) -> dict:
    n = [3, 4, 6, 8][level]
    start = rng.randrange(0, len(YEARS) - n + 1)
    values = [rng.randrange(1, 20) for _ in range(n)]
    while values.count(max(values)) > 1:
        values = [rng.randrange(1, 20) for _ in range(n)]
    return {"years": YEARS[start:start + n], "values": values, "colour": rng.choice(COLOUR_NAMES)}


def _line_render(scene: dict, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    left, bottom, top, right = size * 0.12, size * 0.85, size * 0.08, size * 0.95
    d.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=2)
    n = len(scene["values"])
    font = _font(max(8, size // 24))
    pts = []
    for i, (yr, v) in enumerate(zip(scene["years"], scene["values"])):
        x = left + (i + 0.5) * (right - left) / n
        y = bottom - (bottom - top) * v / 20
        pts.append((x, y))
        d.text((x - 10, bottom + 3), yr[2:], fill="black", font=font)
        d.text((x - 4, y - size * 0.07), str(v), fill="black", font=font)
    d.line(pts, fill=COLOURS[scene["colour"]], width=3)
    for x, y in pts:
        d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=COLOURS[scene["colour"]])
    return img


def _line_questions(scene: dict, rng: random.Random) -> list[QuestionSpec]:
    yrs, vals = scene["years"], scene["values"]
    peak = yrs[vals.index(max(vals))]
    choices, _ = _mc(rng, peak, yrs)
    rises = sum(b > a for a, b in zip(vals, vals[1:]))
    return [
        QuestionSpec("peak", ["In which year does the line chart reach its highest value?",
                              "Which year shows the peak of the line?"],
                     "When is it highest?", peak, "text", "multi_choice", ["statistical reasoning"], 1, choices),
        QuestionSpec("first", [f"What is the value in {yrs[0]} on the line chart?",
                               f"According to the line, what was recorded in {yrs[0]}?"],
                     f"What is the value in {yrs[0]}?", str(vals[0]), "integer", "free_form", ["statistical reasoning"], 1),
        QuestionSpec("rises", ["In how many years does the value increase compared with the year before?",
                               "How many times does the line go up from one year to the next?"],
                     "How many increases?", str(rises), "integer", "free_form",
                     ["statistical reasoning", "logical reasoning"], 2),
        QuestionSpec("points", ["How many years are shown in the line chart?", "How many data points does the line have?"],
                     "How many points?", str(len(yrs)), "integer", "free_form", ["statistical reasoning"], 1),
    ]


def _triangle_scene(rng: random.Random, level: int) -> dict:
    while True:
        a = rng.randrange(25, 110)
        b = rng.randrange(25, 110)
        c = 180 - a - b
        if c >= 20:
            break
    return {"angles": [a, b, c], "labels": ["A", "B", "C"], "shown": [True, True, False],
            "base": rng.randrange(4, 13), "ticks": level}


def _triangle_points(scene: dict, size: int) -> list[tuple[float, float]]:
    a, b, _ = [math.radians(x) for x in scene["angles"]]
    # place A at left, B at right, C from the two base angles
    ax, ay, bx, by = size * 0.1, size * 0.8, size * 0.9, size * 0.8
    base = bx - ax
    cx = ax + base * math.tan(b) / (math.tan(a) + math.tan(b))
    cy = ay - (cx - ax) * math.tan(a)
    cy = max(cy, size * 0.08)
    return [(ax, ay), (bx, by), (cx, cy)]


def _triangle_render(scene: dict, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    pts = _triangle_points(scene, size)
    d.polygon(pts, outline="black", width=2)
    font = _font(max(9, size // 18))
    for (x, y), lab, ang, shown in zip(pts, scene["labels"], scene["angles"], scene["shown"]):
        d.text((x - 6, y + 4 if y > size / 2 else y - 16), lab, fill="blue", font=font)
        if shown:
            d.text((x + (12 if x < size / 2 else -40), y - 18), f"{ang}°", fill="black", font=font)
    # tick marks add clutter proportional to the complexity the scene was drawn at
    for i in range(scene["ticks"] * 2):
        x = pts[0][0] + (pts[1][0] - pts[0][0]) * (i + 1) / (scene["ticks"] * 2 + 1)
        d.line([(x, pts[0][1] - 4), (x, pts[0][1] + 4)], fill="gray", width=1)
    d.text((size * 0.45, size * 0.85), f"AB = {scene['base']}", fill="black", font=font)
    return img


def _triangle_questions(scene: dict, rng: random.Random) -> list[QuestionSpec]:
    a, b, c = scene["angles"]
    kind = "right" if 90 in (a, b, c) else ("obtuse" if max(a, b, c) > 90 else "acute")
    choices, _ = _mc(rng, kind, ["acute", "right", "obtuse"], 3)
    return [
        QuestionSpec("third_angle", [
            f"In triangle ABC, angle A is {a}° and angle B is {b}°. What is the measure of angle C?",
            f"Triangle ABC has ∠A = {a}° and ∠B = {b}°. Find ∠C.",
            f"Given that ∠A = {a}° and ∠B = {b}° in triangle ABC, how many degrees is ∠C?"],
            "As shown in the figure, what is the measure of angle C?", str(c), "integer", "free_form",
            ["geometry reasoning", "algebraic reasoning"], 2, unit="°"),
        QuestionSpec("kind", ["Is triangle ABC acute, right or obtuse?",
                              "What kind of triangle is ABC by its largest angle?"],
                     "What kind of triangle is this?", kind, "text", "multi_choice", ["geometry reasoning"], 2, choices),
        QuestionSpec("angle_sum", ["What is the sum of the interior angles of triangle ABC?",
                                   "How many degrees do the three angles of triangle ABC add up to?"],
                     "What do the angles add up to?", "180", "integer", "free_form", ["geometry reasoning"], 1, unit="°"),
        QuestionSpec("exterior", [f"What is the exterior angle at C of triangle ABC, given ∠A = {a}° and ∠B = {b}°?",
                                  f"With ∠A = {a}° and ∠B = {b}°, find the exterior angle of triangle ABC at vertex C."],
                     "What is the exterior angle at C?", str(a + b), "integer", "free_form",
                     ["geometry reasoning", "algebraic reasoning"], 2, unit="°"),
    ]


def _rect_scene(rng: random.Random, level: int) -> dict:
    w, h = rng.randrange(2, 15), rng.randrange(2, 15)
    return {"width": w, "height": h, "grid": level >= 2, "diagonal": level >= 1, "extra_marks": level}


def _rect_render(scene: dict, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    w, h = scene["width"], scene["height"]
    scale = size * 0.7 / max(w, h)
    x0, y0 = size * 0.15, size * 0.15
    x1, y1 = x0 + w * scale, y0 + h * scale
    if scene["grid"]:
        for i in range(1, w):
            d.line([(x0 + i * scale, y0), (x0 + i * scale, y1)], fill=(200, 200, 200))
        for j in range(1, h):
            d.line([(x0, y0 + j * scale), (x1, y0 + j * scale)], fill=(200, 200, 200))
    d.rectangle([x0, y0, x1, y1], outline="black", width=2)
    if scene["diagonal"]:
        d.line([(x0, y1), (x1, y0)], fill="gray", width=1)
    font = _font(max(9, size // 18))
    d.text(((x0 + x1) / 2 - 6, y1 + 4), str(w), fill="black", font=font)
    d.text((x1 + 4, (y0 + y1) / 2 - 6), str(h), fill="black", font=font)
    for k in range(scene["extra_marks"]):
        d.rectangle([x0 + 2 + k * 6, y1 - 8, x0 + 6 + k * 6, y1 - 4], fill="black")
    return img


def _rect_questions(scene: dict, rng: random.Random) -> list[QuestionSpec]:
    w, h = scene["width"], scene["height"]
    specs = [
        QuestionSpec("area", [f"A rectangle has width {w} and height {h}. What is its area?",
                              f"What is the area of the rectangle whose sides are {w} and {h}?"],
                     "What is the area of the rectangle?", str(w * h), "integer", "free_form",
                     ["geometry reasoning", "arithmetic reasoning"], 1),
        QuestionSpec("perimeter", [f"A rectangle has width {w} and height {h}. What is its perimeter?",
                                   f"Find the perimeter of the rectangle with sides {w} and {h}."],
                     "What is the perimeter of the rectangle?", str(2 * (w + h)), "integer", "free_form",
                     ["geometry reasoning", "arithmetic reasoning"], 2),
        QuestionSpec("diagonal", [f"A rectangle has width {w} and height {h}. How long is its diagonal?",
                                  f"What is the length of the diagonal of the {w} by {h} rectangle?"],
                     "How long is the diagonal?", str(round(math.hypot(w, h), 1)), "float", "free_form",
                     ["geometry reasoning", "algebraic reasoning"], 3, precision=1),
    ]
    shape = "square" if w == h else "rectangle"
    choices, _ = _mc(rng, shape, ["square", "rectangle", "triangle", "circle"])
    specs.append(QuestionSpec("shape", ["What shape is outlined in the figure?", "Which shape does the diagram show?"],
                              "What shape is it?", shape, "text", "multi_choice", ["geometry reasoning"], 1, choices))
    return specs


def _count_scene(rng: random.Random, level: int) -> dict:
    n = rng.randrange(*[(1, 4), (4, 7), (7, 11), (11, 16)][level])
    colour = rng.choice(COLOUR_NAMES)
    shape = rng.choice(SHAPES)
    others = rng.randrange(0, 2 + level * 2)
    cells = rng.sample(range(36), n + others)
    other_shape = rng.choice([s for s in SHAPES if s != shape])
    return {"shape": shape, "colour": colour, "count": n, "cells": cells[:n],
            "distractor_shape": other_shape, "distractor_cells": cells[n:], "add": rng.randrange(1, 6)}


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline="black")
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill, outline="black")
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill, outline="black")


def _count_render(scene: dict, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    cell = size / 6
    for c in scene["cells"]:
        _draw_shape(d, scene["shape"], (c % 6 + 0.5) * cell, (c // 6 + 0.5) * cell, cell * 0.35, COLOURS[scene["colour"]])
    for c in scene["distractor_cells"]:
        _draw_shape(d, scene["distractor_shape"], (c % 6 + 0.5) * cell, (c // 6 + 0.5) * cell, cell * 0.3, (120, 120, 120))
    return img


def _count_questions(scene: dict, rng: random.Random) -> list[QuestionSpec]:
    s, c, n, k = scene["shape"], scene["colour"], scene["count"], scene["add"]
    return [
        QuestionSpec("count", [f"How many {c} {s}s are there?", f"Count the {c} {s}s. How many are there?",
                               f"What is the number of {c} {s}s in the picture?"],
                     "How many are there?", str(n), "integer", "free_form", ["arithmetic reasoning"], 1),
        QuestionSpec("add", [f"If {k} more {c} {s}s are added, how many {c} {s}s will there be?",
                             f"Suppose you add {k} {c} {s}s. How many {c} {s}s are there then?"],
                     f"Add {k}. How many now?", str(n + k), "integer", "free_form", ["arithmetic reasoning"], 2),
        QuestionSpec("grey", [f"How many grey {scene['distractor_shape']}s are there?",
                              f"Count the grey {scene['distractor_shape']}s."],
                     "How many grey ones?", str(len(scene["distractor_cells"])), "integer", "free_form",
                     ["arithmetic reasoning"], 1),
        QuestionSpec("colour", ["What colour are the coloured shapes?", "Which colour do the coloured shapes have?"],
                     "What colour?", c, "text", "multi_choice", ["numeric commonsense"], 1,
                     _mc(rng, c, COLOUR_NAMES)[0]),
    ]


def _clock_scene(rng: random.Random, level: int) -> dict:
    hour = rng.randrange(1, 13)
    minute = [0, rng.choice([0, 30]), rng.choice([0, 15, 30, 45]), rng.randrange(0, 60, 5)][level]
    return {"hour": hour, "minute": minute, "numbers": level >= 1, "ticks": level >= 2, "delta": rng.randrange(1, 5)}


def _clock_render(scene: dict, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    cx = cy = size / 2
    r = size * 0.42
    d.ellipse([cx - r, cy - r, cx + r, cy + r], outline="black", width=3)
    font = _font(max(9, size // 16))
    for h in range(1, 13):
        ang = math.radians(h * 30 - 90)
        if scene["numbers"]:
            d.text((cx + r * 0.82 * math.cos(ang) - 5, cy + r * 0.82 * math.sin(ang) - 7), str(h), fill="black", font=font)
        else:
            d.line([(cx + r * 0.85 * math.cos(ang), cy + r * 0.85 * math.sin(ang)),
                    (cx + r * math.cos(ang), cy + r * math.sin(ang))], fill="black", width=2)
    if scene["ticks"]:
        for m in range(60):
            ang = math.radians(m * 6 - 90)
            d.point((cx + r * 0.95 * math.cos(ang), cy + r * 0.95 * math.sin(ang)), fill="black")
    h_ang = math.radians((scene["hour"] % 12 + scene["minute"] / 60) * 30 - 90)
    m_ang = math.radians(scene["minute"] * 6 - 90)
    d.line([(cx, cy), (cx + r * 0.5 * math.cos(h_ang), cy + r * 0.5 * math.sin(h_ang))], fill="black", width=5)
    d.line([(cx, cy), (cx + r * 0.8 * math.cos(m_ang), cy + r * 0.8 * math.sin(m_ang))], fill="red", width=2)
    return img


def _clock_questions(scene: dict, rng: random.Random) -> list[QuestionSpec]:
    h, m, k = scene["hour"], scene["minute"], scene["delta"]
    time = f"{h}:{m:02d}"
    pool = [f"{(h + dh - 1) % 12 + 1}:{mm:02d}" for dh in (-1, 0, 1, 2) for mm in (m, (m + 30) % 60)]
    later = (h + k - 1) % 12 + 1
    return [
        QuestionSpec("hour", ["What hour is shown on the clock?", "Which hour does the short hand point to?"],
                     "What hour is it?", str(h), "integer", "free_form", ["numeric commonsense"], 1),
        QuestionSpec("time", ["What time does the clock show?", "Read the clock. What time is it?"],
                     "What time is it?", time, "text", "multi_choice", ["numeric commonsense"], 1,
                     _mc(rng, time, pool)[0]),
        QuestionSpec("later", [f"What hour will the clock show {k} hours later?",
                               f"Add {k} hours to the time on the clock. What is the hour then?"],
                     f"What hour is it after {k} hours?", str(later), "integer", "free_form",
                     ["numeric commonsense", "arithmetic reasoning"], 2),
        QuestionSpec("minute", ["How many minutes past the hour does the clock show?",
                                "What is the minute reading on the clock?"],
                     "How many minutes past?", str(m), "integer", "free_form", ["numeric commonsense"], 1),
    ]


ITEMS = ["pen", "book", "cup", "hat", "ball", "kite", "lamp", "sock"]


def _table_scene(rng: random.Random, level: int) -> dict:
    n = [2, 3, 4, 6][level]
    names = rng.sample(ITEMS, n)
    return {"items": names, "prices": [rng.randrange(1, 20) for _ in names], "qty": rng.randrange(2, 6)}


def _table_render(scene: dict, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    n = len(scene["items"]) + 1
    row = min(size * 0.8 / n, size / 6)
    x0, y0, x1 = size * 0.1, size * 0.1, size * 0.9
    font = _font(max(9, int(row * 0.45)))
    d.rectangle([x0, y0, x1, y0 + row], fill=(210, 225, 245))
    d.text((x0 + 6, y0 + row * 0.25), "item", fill="black", font=font)
    d.text(((x0 + x1) / 2 + 6, y0 + row * 0.25), "price ($)", fill="black", font=font)
    for i, (name, price) in enumerate(zip(scene["items"], scene["prices"]), 1):
        y = y0 + i * row
        d.text((x0 + 6, y + row * 0.25), name, fill="black", font=font)
        d.text(((x0 + x1) / 2 + 6, y + row * 0.25), str(price), fill="black", font=font)
    for i in range(n + 1):
        d.line([(x0, y0 + i * row), (x1, y0 + i * row)], fill="black")
    d.line([(x0, y0), (x0, y0 + n * row)], fill="black")
    d.line([((x0 + x1) / 2, y0), ((x0 + x1) / 2, y0 + n * row)], fill="black")
    d.line([(x1, y0), (x1, y0 + n * row)], fill="black")
    return img


def _table_questions(scene: dict, rng: random.Random) -> list[QuestionSpec]:
    items, prices, q = scene["items"], scene["prices"], scene["qty"]
    i, j = rng.sample(range(len(items)), 2)
    cheap = items[prices.index(min(prices))] if prices.count(min(prices)) == 1 else None
    specs = [
        QuestionSpec("price", [f"How much does a {items[i]} cost according to the table?",
                               f"Look at the price list. What is the price of a {items[i]}?"],
                     f"How much is a {items[i]}?", str(prices[i]), "integer", "free_form",
                     ["arithmetic reasoning"], 1, unit="$"),
        QuestionSpec("pair", [f"How much do a {items[i]} and a {items[j]} cost together?",
                              f"What is the total price of one {items[i]} and one {items[j]}?"],
                     f"A {items[i]} and a {items[j]} cost how much?", str(prices[i] + prices[j]), "integer",
                     "free_form", ["arithmetic reasoning"], 2, unit="$"),
        QuestionSpec("qty", [f"How much do {q} {items[i]}s cost?", f"What would {q} {items[i]}s cost in total?"],
                     f"{q} of the {items[i]}s cost how much?", str(prices[i] * q), "integer", "free_form",
                     ["arithmetic reasoning"], 2, unit="$"),
        QuestionSpec("rows", ["How many items are listed in the table?", "How many rows of items does the table have?"],
                     "How many items?", str(len(items)), "integer", "free_form", ["arithmetic reasoning"], 1),
    ]
    if cheap:
        specs.append(QuestionSpec("cheapest", ["Which item in the table is the cheapest?",
                                               "Which item has the lowest price?"],
                                  "Which is cheapest?", cheap, "text", "multi_choice", ["arithmetic reasoning"], 1,
                                  _mc(rng, cheap, items + ITEMS)[0]))
    return specs


CYCLES = {
    "frog": ["egg", "tadpole", "froglet", "frog"],
    "butterfly": ["egg", "larva", "pupa", "adult"],
    "plant": ["seed", "sprout", "plant", "flower", "fruit"],
    "water": ["rain", "river", "sea", "vapour", "cloud"],
}


def _cycle_scene(rng: random.Random, level: int) -> dict:
    name = rng.choice(list(CYCLES))
    stages = CYCLES[name]
    return {"cycle": name, "stages": stages, "decor": level, "colour": rng.choice(COLOUR_NAMES)}


def _cycle_render(scene: dict, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    n = len(scene["stages"])
    cx = cy = size / 2
    r = size * 0.33
    font = _font(max(9, size // 18))
    pts = [(cx + r * math.cos(math.radians(360 * i / n - 90)), cy + r * math.sin(math.radians(360 * i / n - 90)))
           for i in range(n)]
    for i, (x, y) in enumerate(pts):
        nx, ny = pts[(i + 1) % n]
        d.line([(x, y), (nx, ny)], fill="black", width=2)
        mx, my = x + 0.8 * (nx - x), y + 0.8 * (ny - y)
        d.ellipse([mx - 4, my - 4, mx + 4, my + 4], fill="black")  # arrow head
    for (x, y), stage in zip(pts, scene["stages"]):
        d.rounded_rectangle([x - 28, y - 10, x + 28, y + 10], radius=5, fill=COLOURS[scene["colour"]], outline="black")
        d.text((x - 24, y - 7), stage, fill="white", font=font)
    for k in range(scene["decor"] * 3):
        ang = math.radians(k * 37)
        d.ellipse([cx + 20 * math.cos(ang) - 3, cy + 20 * math.sin(ang) - 3, cx + 20 * math.cos(ang) + 3,
                   cy + 20 * math.sin(ang) + 3], outline="gray")
    return img


def _cycle_questions(scene: dict, rng: random.Random) -> list[QuestionSpec]:
    stages, name = scene["stages"], scene["cycle"]
    i = rng.randrange(len(stages))
    nxt = stages[(i + 1) % len(stages)]
    two = stages[(i + 2) % len(stages)]
    all_stages = sorted({s for v in CYCLES.values() for s in v})
    label = f"{name} life cycle" if name != "water" else "water cycle"
    return [
        QuestionSpec("next", [f"In the {label} shown, which stage comes right after {stages[i]}?",
                              f"Following the arrows of the {label}, what follows {stages[i]}?"],
                     f"What comes after {stages[i]}?", nxt, "text", "multi_choice", ["scientific reasoning"], 1,
                     _mc(rng, nxt, stages + all_stages)[0]),
        QuestionSpec("next2", [f"In the {label} shown, which stage comes two steps after {stages[i]}?",
                               f"Starting at {stages[i]}, which stage do you reach after following two arrows?"],
                     f"What comes two steps after {stages[i]}?", two, "text", "multi_choice",
                     ["scientific reasoning", "logical reasoning"], 2, _mc(rng, two, stages + all_stages)[0]),
        QuestionSpec("stages", [f"How many stages does the {label} in the diagram have?",
                                "How many stages are shown in the cycle diagram?"],
                     "How many stages?", str(len(stages)), "integer", "free_form", ["scientific reasoning"], 1),
        QuestionSpec("topic", ["What does this diagram show?", "Which process is drawn in the diagram?"],
                     "What is this?", label, "text", "multi_choice", ["scientific reasoning"], 1,
                     _mc(rng, label, [f"{k} life cycle" if k != "water" else "water cycle" for k in CYCLES])[0]),
    ]


CHAINS = [["grass", "rabbit", "fox", "eagle"], ["algae", "shrimp", "fish", "seal", "shark"],
          ["leaf", "caterpillar", "bird", "cat"], ["seeds", "mouse", "snake", "hawk"]]


def _chain_scene(rng: random.Random, level: int) -> dict:
    chain = rng.choice(CHAINS)
    length = min(len(chain), [2, 3, 4, 5][level])  # the level shows: one more organism each
    return {"chain": chain[:length], "vertical": rng.random() < 0.5, "colour": rng.choice(COLOUR_NAMES)}


def _chain_render(scene: dict, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    n = len(scene["chain"])
    font = _font(max(9, size // 18))
    for i, name in enumerate(scene["chain"]):
        t = (i + 0.5) / n
        x, y = (size / 2, size * t) if scene["vertical"] else (size * t, size / 2 + (i % 2) * 30 - 15)
        d.rectangle([x - 30, y - 10, x + 30, y + 10], fill=COLOURS[scene["colour"]], outline="black")
        d.text((x - 26, y - 7), name, fill="white", font=font)
        if i + 1 < n:
            t2 = (i + 1.5) / n
            x2, y2 = (size / 2, size * t2) if scene["vertical"] else (size * t2, size / 2 + ((i + 1) % 2) * 30 - 15)
            d.line([(x, y + 10 if scene["vertical"] else y), (x2, y2 - 10 if scene["vertical"] else y2)], fill="black", width=2)
            d.ellipse([x2 - 3 - (0 if scene["vertical"] else 32), y2 - 13 if scene["vertical"] else y2 - 3,
                       x2 + 3 - (0 if scene["vertical"] else 32), y2 - 7 if scene["vertical"] else y2 + 3], fill="black")
    return img


def _chain_questions(scene: dict, rng: random.Random) -> list[QuestionSpec]:
    chain = scene["chain"]
    every = sorted({x for c in CHAINS for x in c})
    i = rng.randrange(len(chain) - 1)
    return [
        QuestionSpec("producer", ["Which organism is the producer in this food chain?",
                                  "In the food chain shown, which organism makes its own food?"],
                     "Which one is the producer?", chain[0], "text", "multi_choice", ["scientific reasoning"], 1,
                     _mc(rng, chain[0], chain + every)[0]),
        QuestionSpec("top", ["Which organism is at the top of this food chain?",
                             "Which animal in the food chain has no predator shown?"],
                     "Which one is on top?", chain[-1], "text", "multi_choice", ["scientific reasoning"], 1,
                     _mc(rng, chain[-1], chain + every)[0]),
        QuestionSpec("eaten_by", [f"In this food chain, what eats the {chain[i]}?",
                                  f"Which organism feeds on the {chain[i]} in the food chain?"],
                     f"What eats the {chain[i]}?", chain[i + 1], "text", "multi_choice",
                     ["scientific reasoning", "logical reasoning"], 2, _mc(rng, chain[i + 1], chain + every)[0]),
        QuestionSpec("length", ["How many organisms are in this food chain?", "How many links does the food chain have?"],
                     "How many organisms?", str(len(chain)), "integer", "free_form", ["scientific reasoning"], 1),
    ]


SIZES = {"small": 0.06, "large": 0.13}


def _shapes_scene(rng: random.Random, level: int) -> dict:
    n = rng.randrange(*[(1, 3), (3, 5), (5, 8), (8, 12)][level])
    objects, misses = [], 0
    while len(objects) < n:
        obj = {"shape": rng.choice(SHAPES), "colour": rng.choice(COLOUR_NAMES), "size": rng.choice(list(SIZES)),
               "x": rng.uniform(0.15, 0.85), "y": rng.uniform(0.15, 0.85)}
        if all(math.hypot(obj["x"] - o["x"], obj["y"] - o["y"]) > 0.2 for o in objects):
            objects.append(obj)
        else:
            misses += 1
            if misses > 500:  # a crowded layout can leave no room for the next object: start over
                objects, misses = [], 0
    return {"objects": objects}


def _shapes_render(scene: dict, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), (235, 235, 235))
    d = ImageDraw.Draw(img)
    for o in scene["objects"]:
        _draw_shape(d, o["shape"], o["x"] * size, o["y"] * size, SIZES[o["size"]] * size, COLOURS[o["colour"]])
    return img


def _shapes_questions(scene: dict, rng: random.Random) -> list[QuestionSpec]:
    objs = scene["objects"]
    colour = rng.choice([o["colour"] for o in objs])
    shape = rng.choice(SHAPES)
    n_col = sum(o["colour"] == colour for o in objs)
    n_shape = sum(o["shape"] == shape for o in objs)
    n_large = sum(o["size"] == "large" for o in objs)
    specs = [
        QuestionSpec("total", ["How many objects are there in the image?", "Count all the shapes. How many are there?"],
                     "How many objects?", str(len(objs)), "integer", "free_form", ["arithmetic reasoning"], 1),
        QuestionSpec("by_colour", [f"How many {colour} objects are there?", f"Count the {colour} shapes in the scene."],
                     f"How many {colour}?", str(n_col), "integer", "free_form", ["arithmetic reasoning"], 1),
        QuestionSpec("by_shape", [f"How many {shape}s are in the image?", f"What is the number of {shape}s in the scene?"],
                     f"How many {shape}s?", str(n_shape), "integer", "free_form", ["arithmetic reasoning"], 1),
        QuestionSpec("subtract", [f"Subtract all {colour} objects. How many objects are left?",
                                  f"If every {colour} object is removed, how many objects remain?"],
                     f"Remove {colour}. How many left?", str(len(objs) - n_col), "integer", "free_form",
                     ["arithmetic reasoning"], 2),
        QuestionSpec("large", ["How many large objects are there?", "Count the big shapes in the image."],
                     "How many big ones?", str(n_large), "integer", "free_form", ["arithmetic reasoning"], 1),
    ]
    if len(objs) == 1:
        o = objs[0]
        specs.append(QuestionSpec("colour_of", ["What colour is the object in the image?", "Which colour is the shape?"],
                                  "What colour?", o["colour"], "text", "multi_choice", ["numeric commonsense"], 1,
                                  _mc(rng, o["colour"], COLOUR_NAMES)[0]))
        specs.append(QuestionSpec("shape_of", ["What shape is the object in the image?", "Which shape is shown?"],
                                  "What shape?", o["shape"], "text", "multi_choice", ["geometry reasoning"], 1,
                                  _mc(rng, o["shape"], SHAPES, 3)[0]))
    return specs


def _spatial_scene(rng: random.Random, level: int) -> dict:
    n = [2, 3, 4, 5][level]  # the level shows: one more object each
    cols = rng.sample(COLOUR_NAMES, n)
    xs = rng.sample([0.14, 0.32, 0.5, 0.68, 0.86], n)
    return {"objects": [{"shape": rng.choice(SHAPES), "colour": c, "x": x, "y": rng.uniform(0.3, 0.7)}
                        for c, x in zip(cols, xs)]}


def _spatial_render(scene: dict, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), (245, 240, 230))
    d = ImageDraw.Draw(img)
    d.line([(0, size * 0.8), (size, size * 0.8)], fill=(150, 120, 90), width=3)
    for o in scene["objects"]:
        _draw_shape(d, o["shape"], o["x"] * size, o["y"] * size, size * 0.08, COLOURS[o["colour"]])
    return img


def _spatial_questions(scene: dict, rng: random.Random) -> list[QuestionSpec]:
    objs = sorted(scene["objects"], key=lambda o: o["x"])
    a, b = rng.sample(objs, 2)
    left = "Yes" if a["x"] < b["x"] else "No"
    return [
        QuestionSpec("leftmost", ["What colour is the leftmost object?", "Which colour is the object furthest to the left?"],
                     "Leftmost colour?", objs[0]["colour"], "text", "multi_choice", ["logical reasoning"], 1,
                     _mc(rng, objs[0]["colour"], [o["colour"] for o in objs] + COLOUR_NAMES)[0]),
        QuestionSpec("rightmost", ["What colour is the rightmost object?", "Which colour is the object furthest to the right?"],
                     "Rightmost colour?", objs[-1]["colour"], "text", "multi_choice", ["logical reasoning"], 1,
                     _mc(rng, objs[-1]["colour"], [o["colour"] for o in objs] + COLOUR_NAMES)[0]),
        QuestionSpec("left_of", [f"Is the {a['colour']} {a['shape']} to the left of the {b['colour']} {b['shape']}?",
                                 f"Does the {a['colour']} {a['shape']} stand left of the {b['colour']} {b['shape']}?"],
                     f"Is the {a['colour']} one left of the {b['colour']} one?", left, "text", "multi_choice",
                     ["logical reasoning"], 1, ["Yes", "No"]),
        QuestionSpec("count", ["How many objects stand on the shelf?", "How many shapes are on the line?"],
                     "How many?", str(len(objs)), "integer", "free_form", ["arithmetic reasoning"], 1),
    ]


@dataclass(frozen=True)
class Template:
    source: str
    task: str
    context: str
    scene: Callable[[random.Random, int], dict]
    render: Callable[[dict, int], Image.Image]
    questions: Callable[[dict, random.Random], list[QuestionSpec]]


TEMPLATES: dict[str, Template] = {
    t.source: t
    for t in [
        Template("synth-barchart", "FQA", "bar chart", _bar_scene, _bar_render, _bar_questions),
        Template("synth-piechart", "FQA", "pie chart", _pie_scene, _pie_render, _pie_questions),
        Template("synth-linechart", "FQA", "line plot", _line_scene, _line_render, _line_questions),
        Template("synth-triangle", "GPS", "geometry diagram", _triangle_scene, _triangle_render, _triangle_questions),
        Template("synth-rectangle", "GPS", "geometry diagram", _rect_scene, _rect_render, _rect_questions),
        Template("synth-counting", "MWP", "abstract scene", _count_scene, _count_render, _count_questions),
        Template("synth-clock", "MWP", "abstract scene", _clock_scene, _clock_render, _clock_questions),
        Template("synth-pricetable", "MWP", "table", _table_scene, _table_render, _table_questions),
        Template("synth-lifecycle", "TQA", "scientific figure", _cycle_scene, _cycle_render, _cycle_questions),
        Template("synth-foodchain", "TQA", "scientific figure", _chain_scene, _chain_render, _chain_questions),
        Template("synth-shapes", "VQA", "synthetic scene", _shapes_scene, _shapes_render, _shapes_questions),
        Template("synth-spatial", "VQA", "synthetic scene", _spatial_scene, _spatial_render, _spatial_questions),
    ]
}


def scene_questions(source: str, scene: dict, seed: int) -> list[QuestionSpec]:
    """All questions a template can ask about a scene; deterministic for (scene, seed)."""
    return TEMPLATES[source].questions(scene, random.Random(seed))


def complexity_of(scene_level: int, specs: list[QuestionSpec]) -> int:
    """The scene's elements set the level; a question that needs three or more steps bumps it."""
    return min(3, scene_level + (1 if max(s.steps for s in specs) >= 3 and scene_level < 3 else 0))


def degrade(img: Image.Image, kind: str, rng: random.Random) -> Image.Image:
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(3.0, 5.0)))
    if kind == "noise":
        import numpy as np

        arr = np.asarray(img).astype("float32")
        noise = np.random.default_rng(rng.randrange(2**32)).normal(0, rng.uniform(45, 70), arr.shape)
        return Image.fromarray(np.clip(arr + noise, 0, 255).astype("uint8"))
    if kind == "jpeg":
        import io

        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=rng.randint(2, 5))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == "tiny":
        side = rng.randint(20, 36)
        return img.resize((side, side), Image.BILINEAR)
    raise ValueError(f"unknown degradation {kind!r}")


class GeneratorConfig(Strict):
    """`data.synthetic` (and the held-out and scorer splits): the procedural source."""

    n_images: int = Field(600, ge=0)
    seed: int = 0
    image_size: int = Field(224, ge=32, le=2048)
    unclear_fraction: float = Field(0.1, ge=0, le=1)
    level_weights: tuple[float, float, float, float] = (0.3, 0.4, 0.2, 0.1)
    sources: tuple[str, ...] | None = None  # default: every template
    id_prefix: str = "synth"

    @field_validator("level_weights")
    @classmethod
    def _weights(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(w < 0 for w in value) or sum(value) <= 0:
            raise ValueError(f"level weights must be non-negative with a positive sum, got {list(value)}")
        return value

    @field_validator("sources")
    @classmethod
    def _known(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        unknown = sorted(set(value or ()) - set(TEMPLATES))
        if unknown:
            raise ValueError(f"unknown templates {unknown}; known: {sorted(TEMPLATES)}")
        return value


def generate(out_dir: str | Path, cfg: GeneratorConfig, progress: bool = False) -> Path:
    """Write `<out_dir>/images/<source>/<id>.png` plus `<out_dir>/data.json`, a list of LLaVA
    conversation records carrying MathVista-style metadata. Returns the JSON path."""
    from ..formats import record_from_spec

    out = Path(out_dir)
    rng = random.Random(cfg.seed)
    sources = list(cfg.sources or TEMPLATES)
    records = []
    iterator = range(cfg.n_images)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"generate {out.name}", unit="img")
    for i in iterator:
        source = sources[i % len(sources)]
        tpl = TEMPLATES[source]
        level = rng.choices(range(4), weights=cfg.level_weights)[0]
        scene_seed = rng.randrange(2**31)
        scene = tpl.scene(random.Random(scene_seed), level)
        specs = scene_questions(source, scene, scene_seed)
        spec = specs[rng.randrange(len(specs))]
        img = tpl.render(scene, cfg.image_size)
        degradation = rng.choice(DEGRADATIONS) if rng.random() < cfg.unclear_fraction else None
        if degradation:
            img = degrade(img, degradation, rng)
        item_id = f"{cfg.id_prefix}-{i:06d}"
        rel = f"{source}/images/{item_id}.png"
        (out / "images" / source / "images").mkdir(parents=True, exist_ok=True)
        img.save(out / "images" / rel)
        item = SyntheticItem(
            id=item_id, source=source, task=tpl.task, image=rel, complexity=complexity_of(level, specs),
            clear=degradation is None, degradation=degradation,
            scene={"template": source, "seed": scene_seed, "level": level, **scene}, question=spec,
            context=tpl.context,
        )
        records.append(record_from_spec(item))
    path = out / "data.json"
    path.write_text(json.dumps(records, indent=1, ensure_ascii=False))
    return path


def generate_cached(cfg: GeneratorConfig, root: str | Path, progress: bool = False) -> Path:
    """`generate` into `<root>/<id_prefix>-<digest of cfg>`: content-addressed, so the same settings
    always give the same folder and a second call returns the JSON path at once."""
    import hashlib

    key = hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]
    out = Path(root) / f"{cfg.id_prefix}-{key}"
    done = out / "data.json"
    if not done.exists():
        generate(out, cfg, progress=progress)
    return done
