"""Math-V (MATH-Vision): loader and the benchmark's own rule-based scoring.

The rules follow mathllm/MATH-V `evaluation/evaluate.py` + `utils.py`: a response is cut down to
its final answer by a few string heuristics (a trailing option letter, the text after "the answer
is", a boxed answer), cleaned of LaTeX decoration, lower-cased, and judged equal to the ground-truth
letter *or* the ground-truth option text, either literally, as tuples, or numerically (LaTeX parsed
by latex2sympy, both sides rounded to 2 decimals). Results are "correct/total=acc%" per subject,
level and subject×level, in the benchmark's own key layout.

Quirks of the reference are kept on purpose (they move scores): fractions are re-braced only when a
`sqrt` is present, "0.5" becomes `\\frac{1}{2}`, a response with several "is " takes the tail, and
numbers are what Python's eval makes of latex2sympy's output: exact integers of any size (so
`\\frac{3^{1008}-1}{3^{1009}}` equals 1/3 at 2 decimals), comparisons as booleans (`3>2` equals 1),
`E` unknown. Only the size of integers is bounded (TooLarge: not equal), where the reference would
run out of time or memory.

Checked against the Math-V repository's 16 stored outputs (48,640 judgements): rescored, every
`*_result.json` is reproduced key for key but one item of Gemini-Pro (id 3013: the reply "The answer
is 4/3." against `\\frac{4}{3}`, stored as wrong). The published evaluate.py/utils.py, run unchanged
with latex2sympy2 1.5.0-1.9.1 and sympy 1.5-1.14, judges that item right, as this module does; the
stored verdict did not come from the published code, so it is not imitated.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..paths import resolve_image_path

LETTERS = "ABCDE"
ANSWER_PHRASES = ("the final answer is", "the answer is", "the correct answer is", "the answer should be")


# ---------------------------------------------------------------- numeric evaluation of LaTeX
# The reference turns LaTeX into a sympy expression with latex2sympy and hands str() of it to Python's
# eval, with `from math import *` in scope; `round(value, 2)` of both sides is then compared. Python
# ints are exact, so `(-1 + 3**1008)/(3**1009)` evaluates (true division of two big ints is correctly
# rounded) and `\frac{3^{1008}-1}{3^{1009}}` equals `\frac{1}{3}` at 2 decimals. Here a small
# interpreter walks the same expression with the same Python operators, so it gets the same numbers
# (and the same exceptions, which mean "not equal"), but it only knows numbers, `math` names and
# arithmetic, and it refuses before any integer grows past _MAX_INT_BITS, where the reference would
# spend unbounded time or memory.
_MATH_NAMES = {k: v for k, v in vars(math).items() if not k.startswith("_")}
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow, ast.Mod: operator.mod, ast.FloorDiv: operator.floordiv}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}  # sympy prints `3 > 2`; eval gives a bool
_MAX_INT_BITS = 1 << 17        # ~40,000 decimal digits: 3**1009 is 1,600 bits
_MAX_FACTORIAL = 10_000        # factorial/comb/perm arguments (10000! is ~118,000 bits)
_MAX_LATEX_CHARS = 2000        # latex2sympy's parse time grows with length (and nesting, below)
_MAX_NESTING = 100
# latex2sympy itself computes \binom, \gcd/\lcm, matrix products and \sqrt[n]; with a large or nested
# power or a number of five or more digits inside, that computation is unbounded (\binom{10^6}{5*10^5}
# runs for minutes), so such text (more than one power, a power over three digits, or a 5-digit
# number) is refused before parsing.
_SELF_EVALUATING = re.compile(r"binom|choose|gcd|lcm|matrix|array|operatorname|sqrt\s*\[")
_SMALL_POWER = re.compile(r"\^\s*(?:\d{1,3}|\{\s*\d{1,3}\s*\})")
_BIG_NUMBER = re.compile(r"\d{5,}")


class TooLarge(ArithmeticError):
    """The expression is one the reference would take unbounded time or memory to evaluate."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int)  # bool included, as in Python arithmetic


def _check_int(value: Any) -> Any:
    if _is_int(value) and value.bit_length() > _MAX_INT_BITS:
        raise TooLarge("integer too large")
    return value


def _power(base: Any, exponent: Any) -> Any:
    if _is_int(base) and _is_int(exponent) and exponent > 0 and abs(base) > 1:
        # |base| >= 2, so the result has at least `exponent` bits; log2 takes ints of any size
        if exponent > _MAX_INT_BITS or exponent * math.log2(abs(base)) > _MAX_INT_BITS:
            raise TooLarge("power too large")
    return base ** exponent  # a negative or float exponent, or a float base: a float (or complex), no blow-up


def _binop(op: ast.operator, left: Any, right: Any) -> Any:
    if isinstance(op, ast.Pow):
        return _power(left, right)
    if isinstance(op, ast.Mult) and _is_int(left) and _is_int(right) \
            and left.bit_length() + right.bit_length() > _MAX_INT_BITS:
        raise TooLarge("product too large")
    return _check_int(_BINOPS[type(op)](left, right))


def _call(name: str, args: list[Any]) -> Any:
    if name in ("factorial", "comb", "perm") and any(_is_int(a) and a > _MAX_FACTORIAL for a in args[:1]):
        raise TooLarge(f"{name} argument too large")
    return _check_int(_MATH_NAMES[name](*args))


def _evaluate_node(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate_node(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):  # bools too, like eval
        return _check_int(node.value)
    if isinstance(node, ast.Name) and node.id in _MATH_NAMES:
        return _MATH_NAMES[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _binop(node.op, _evaluate_node(node.left), _evaluate_node(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate_node(node.operand))
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        left = _evaluate_node(node.left)
        for op, comparator in zip(node.ops, node.comparators):  # chained, short-circuit, like Python
            right = _evaluate_node(comparator)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _MATH_NAMES \
            and not node.keywords:
        return _call(node.func.id, [_evaluate_node(a) for a in node.args])
    raise ValueError(f"not a numeric expression: {ast.dump(node)[:80]}")


def _nesting(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "})]":
            depth -= 1
    return deepest


def latex_value(text: str) -> Any:
    """The value a LaTeX string denotes, the way the reference gets it: latex2sympy, then the
    expression string evaluated with `math` names in scope. Raises on anything the reference's eval
    would raise on (a name it does not know, a syntax error, a division by zero, a float overflow), and
    with TooLarge where the reference would spend unbounded time or memory. Python's eval is never
    called: a whitelist interpreter gives the same numbers without running arbitrary text."""
    if len(text) > _MAX_LATEX_CHARS or _nesting(text) > _MAX_NESTING:
        raise TooLarge("expression too long to parse")
    powers = text.count("^")
    if _SELF_EVALUATING.search(text) and (powers > 1 or powers == 1 and not _SMALL_POWER.search(text)
                                          or _BIG_NUMBER.search(text)):
        raise TooLarge("latex2sympy would compute a large value itself")
    from latex2sympy2 import latex2sympy

    expression = str(latex2sympy(text))
    return _evaluate_node(ast.parse(expression, mode="eval"))


# ---------------------------------------------------------------- answer cleaning (utils.py)
def _brace_sqrt(text: str) -> str:
    """`\\sqrt3` -> `\\sqrt{3}` (only the first character is taken as the radicand)."""
    head, *parts = text.split("\\sqrt")
    out = head
    for part in parts:
        out += "\\sqrt" + (part if not part or part[0] == "{" else "{" + part[0] + "}" + part[1:])
    return out


def _brace_fracs(text: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`; gives the input back when a \\frac has under two characters."""
    head, *parts = text.split("\\frac")
    out = head
    for part in parts:
        out += "\\frac"
        if part and part[0] == "{":
            out += part
            continue
        if len(part) < 2:
            return text
        numerator, denominator, rest = part[0], part[1], part[2:]
        out += "{" + numerator + "}" + ("{" + denominator + "}" if denominator != "{" else denominator) + rest
    return out


def _slash_to_frac(text: str) -> str:
    """`3/4` -> `\\frac{3}{4}` when both sides are plain integers."""
    pieces = text.split("/")
    if len(pieces) != 2:
        return text
    try:
        numerator, denominator = int(pieces[0]), int(pieces[1])
    except ValueError:
        return text
    if text != f"{numerator}/{denominator}":
        return text
    return "\\frac{" + str(numerator) + "}{" + str(denominator) + "}"


def _strip_latex(text: str) -> str:
    for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                     ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""), ("$", "")):
        text = text.replace(old, new)
    text = text.split("\\text{ ")[0]  # a unit written as "\text{ cm}" on the right
    text = text.replace("\\%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    if len(text.split("=")) == 2:
        text = text.split("=")[-1]
    if len(text.split("\\approx")) == 2:
        text = text.split("\\approx")[-1]
    if "sqrt" in text:
        text = _brace_sqrt(text)
    text = text.replace(" ", "")
    if "sqrt" in text:  # the reference re-braces fractions only in this case
        text = _brace_fracs(text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _slash_to_frac(text)


_BOXED = re.compile(r"oxed{(.*)}", flags=re.S)


def find_math_answer(text: str) -> str:
    """The cleaned final answer of a (lower-cased) response: the last boxed content if any, the
    part after the last '=' or '\\approx', LaTeX decoration and a few units removed."""
    text = text.lower().replace("{}", "")
    boxed = _BOXED.findall(text)
    answer = boxed[-1] if boxed else text
    close, open_ = answer.find("}"), answer.find("{")
    if close != -1 and (open_ == -1 or close < open_):
        answer = answer.split("}")[0]
    answer = answer.split("=")[-1].split("\\approx")[-1]
    for old, new in ((" ", ""), ("\\,", ""), ("∞", "\\infty"), ("+\\infty", "\\infty"), ("\\\\", "\\"), ("\n", ""),
                     ("\\text", ""), ("\\mbox", ""), ("bmatrix", "pmatrix"), ("\\left", ""), ("\\right", ""),
                     ("^{\\circ}", ""), ("^\\circ", ""), ("{m}^3", ""), ("m^3", ""), ("{units}", ""), ("units", ""),
                     ("{km}", ""), ("km", "")):
        answer = answer.replace(old, new)
    return _strip_latex(answer)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def extract_model_answer(response: str) -> str:
    """The `model_answer` the benchmark derives from a raw response."""
    answer = (response or "").strip()
    for letter in LETTERS:
        if (answer.endswith(f" {letter}.") or answer.endswith(f" ({letter}).") or answer.startswith(f"{letter}\n")
                or answer.startswith(f"({letter})\n") or answer.startswith(f"({letter}) {letter}\n")):
            answer = letter
    tail = answer.split("is ")[-1].rstrip(".")
    if _is_number(tail):
        answer = tail
    if "oxed{" not in answer:
        for phrase in ANSWER_PHRASES:
            for variant in (phrase, phrase.replace("the", "The")):
                found = variant in answer
                answer = answer.split(variant)[-1].strip()
                if found:
                    answer = answer.split("\n")[0].split(". ")[0]
    elif answer.count("oxed{") > 1:
        answer = "\\boxed{" + answer.split("oxed{")[-1]
    answer = find_math_answer(answer)
    for letter in "abcde":
        answer = answer.replace(f"({letter})", letter)
    for letter in "abcde":
        answer = answer.replace("{" + letter + "}", letter)
    return answer.rstrip(".").lstrip(":").strip()


# ---------------------------------------------------------------- comparison
def _evaluate_sequence(text: str) -> str:
    """'(1/2, 3)' -> '(0.5,3)': each element of a tuple or list evaluated and rounded to 2 decimals;
    the input back when it is not a sequence of two or more or an element does not evaluate."""
    elements = text[1:-1].split(",")
    try:
        for opening, closing in (("(", ")"), ("[", "]")):
            if text[0] == opening and text[-1] == closing and len(elements) > 1:
                values = [e if "infty" in e or e in ("a", "-a") else str(round(latex_value(e), 2)) for e in elements]
                return opening + ",".join(values) + closing
    except Exception:
        return text
    return text


def is_equal(answer: str, truth: str) -> bool:
    """The reference's equivalence: case-insensitive literal match, then tuple/list match, then
    numeric match to 2 decimals. Empty strings never match."""
    answer, truth = str(answer).lower(), str(truth).lower()
    if answer.replace(" ", "") == "" or truth.replace(" ", "") == "":
        return False
    if truth.strip() == answer.strip():
        return True
    answer, truth = _evaluate_sequence(answer), _evaluate_sequence(truth)
    if answer == truth:
        return True
    try:
        return round(latex_value(truth), 2) == round(latex_value(answer), 2)
    except Exception:
        return False


def judge(model_answer: str, answer: str, options: list[str]) -> bool:
    """Right when the model answer equals the ground-truth letter or that option's text."""
    truth_text = options[ord(answer) - ord("A")] if options and len(answer) == 1 and answer.isalpha() else ""
    return is_equal(answer, model_answer) or is_equal(truth_text, model_answer)


def aggregate(lines: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Scores in the benchmark's layout: keys '-all', '-levelN', subject, 'subject_levelN' and
    '-levelN_subject', each 'correct/total=acc%', sorted by key."""
    counts: dict[str, list[int]] = {}
    for line in lines:
        subject, level = line["subject"], line["level"]
        for key in ("-all", f"-level{level}", f"{subject}", f"{subject}_level{level}", f"-level{level}_{subject}"):
            tally = counts.setdefault(key, [0, 0])
            tally[0] += bool(line["correct"])
            tally[1] += 1
    out = {}
    for key in sorted(counts):
        right, total = counts[key]
        out[key] = f"{right}/{total}={round(right / total * 100, 2)}%" if total else f"{right}/{total}=0"
    return out


def parse_score(value: str) -> tuple[int, int, float]:
    """'338/3040=11.12%' -> (338, 3040, 11.12)."""
    fraction, _, percent = value.partition("=")
    right, total = (int(x) for x in fraction.split("/"))
    return right, total, float(percent.rstrip("%") or 0)


def score_lines(lines: list[dict], ground_truth: Mapping[str, Mapping[str, Any]] | None = None,
                regen_answer: bool = True) -> tuple[list[dict], dict[str, str]]:
    """Judge benchmark-format output lines (`id`, `response`, optionally `model_answer`). Ground
    truth comes from `ground_truth[id]` (raw Math-V records) or from the line itself."""
    judged = []
    for line in lines:
        record = (ground_truth or {}).get(str(line["id"]), line)
        missing = {"answer", "options", "subject", "level"} - set(record)
        if missing:
            raise ValueError(f"Math-V line {line['id']}: no ground truth ({', '.join(sorted(missing))}); "
                             "pass the benchmark data")
        out = dict(line)
        if regen_answer or "model_answer" not in out:
            out["model_answer"] = extract_model_answer(str(out.get("response", "")))
        out["correct"] = judge(out["model_answer"], str(record["answer"]), list(record["options"] or []))
        out["subject"], out["level"] = record["subject"], record["level"]
        judged.append(out)
    return judged, aggregate(judged)


# ---------------------------------------------------------------- loading
def _answer_type(answer: str) -> tuple[str, int | None]:
    if re.fullmatch(r"-?\d+", answer):
        return "integer", None
    if re.fullmatch(r"-?\d+\.\d+", answer):
        return "float", len(answer.split(".")[1])
    return "text", None


def read_records(root: str | Path) -> list[dict]:
    """Raw Math-V records from a directory (`testmini.jsonl`, else `test.jsonl`) or a JSONL file."""
    path = Path(root)
    if path.is_dir():
        path = path / "testmini.jsonl" if (path / "testmini.jsonl").exists() else path / "test.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"Math-V data not found: {path}")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON ({err})") from err
    return records


def load_mathv(root: str | Path, limit: int | None = None) -> list[dict]:
    """Problems (the shared internal type) with absolute image paths and MathVista-style queries;
    `record` keeps the raw Math-V fields for the benchmark's own scoring."""
    from .mathvista import build_query

    root = Path(root)
    base = root if root.is_dir() else root.parent
    problems = []
    for item in read_records(root)[: limit or None]:
        question = re.sub(r"\s*<image\d*>\s*", " ", item["question"]).strip()
        options = item.get("options") or []
        answer = str(item["answer"]).strip()
        if options:
            letters = [chr(ord("A") + i) for i in range(len(options))]
            truth = options[letters.index(answer)] if answer in letters else answer
            qtype, atype, precision, choices = "multi_choice", "text", None, options
        else:
            truth, (atype, precision), qtype, choices = answer, _answer_type(answer), "free_form", None
        problems.append({
            "benchmark": "mathv", "pid": str(item["id"]), "question": question, "image": item["image"],
            "image_path": str(resolve_image_path(base, item["image"])), "choices": choices, "unit": None,
            "precision": precision, "answer": truth, "question_type": qtype, "answer_type": atype,
            "query": build_query(question, qtype, atype, precision, choices),
            "metadata": {"language": "english", "source": "Math-V", "category": "math-targeted-vqa",
                         "task": item.get("subject"), "context": "math competition figure",
                         "grade": f"level {item.get('level')}", "skills": [item.get("subject")]},
            "record": {k: item.get(k) for k in ("id", "question", "options", "answer", "subject", "level", "image")},
        })
    return problems
