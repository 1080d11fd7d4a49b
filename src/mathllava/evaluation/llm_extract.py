"""Answer extraction by an LLM over any OpenAI-compatible chat endpoint (the MathVista protocol's
last step, used only when the quick rules find nothing). The few-shot prompt is this project's own:
one worked example per answer kind, then the problem's query, the model's response and a cue."""

from __future__ import annotations

INSTRUCTION = (
    "Below, a model answered a question. Copy only its final answer, in the form the question asks "
    "for: an option letter for multiple choice, a bare number for numeric questions, a Python list "
    "for list questions. Write nothing else."
)

EXAMPLES = [
    ("Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, "
     "at the end.\nQuestion: How many apples are on the table?",
     "I can see three apples on the left and two on the right, so five apples in total.", "5"),
    ("Hint: Please answer the question requiring a floating-point number with one decimal place and provide the "
     "final value, e.g., 1.2, 1.3, 1.4, at the end.\nQuestion: What is the length of side AB? (Unit: cm)",
     "Using the Pythagorean theorem, AB = sqrt(3^2 + 4^2) = 5.0 cm.", "5.0"),
    ("Hint: Please answer the question requiring a floating-point number with two decimal places and provide the "
     "final value, e.g., 1.23, 1.34, 1.45, at the end.\nQuestion: What fraction of the bar is shaded?",
     "Three of the eight equal parts are shaded, which is 0.375, about 0.38.", "0.38"),
    ("Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., "
     "[1, 2, 3], [1.2, 1.3, 1.4], at the end.\nQuestion: In which years did sales exceed 50?",
     "Sales were above 50 in 2019 and again in 2021.", "[2019, 2021]"),
    ("Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
     "Question: Which shape has the most sides?\nChoices:\n(A) triangle\n(B) square\n(C) hexagon\n(D) pentagon",
     "The hexagon has six sides, more than any other shape shown.", "C"),
]


def build_prompt(query: str, response: str) -> str:
    blocks = [INSTRUCTION]
    for example_query, example_response, answer in EXAMPLES:
        blocks.append(f"{example_query}\n\nModel response: {example_response}\n\nExtracted answer: {answer}")
    blocks.append(f"{query}\n\nModel response: {response}\n\nExtracted answer: ")
    return "\n\n".join(blocks)


class ChatAnswerExtractor:
    """Callable `(query, response) -> answer` over an `OpenAIChatBackend` (temperature 0)."""

    def __init__(self, backend, max_tokens: int = 32):
        self.backend, self.max_tokens = backend, max_tokens
        self.calls = 0

    def __call__(self, query: str, response: str) -> str:
        self.calls += 1
        messages = [{"role": "user", "content": build_prompt(query, response)}]
        return self.backend.chat(messages, max_tokens=self.max_tokens).strip()
