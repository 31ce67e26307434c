"""The TinyStories paper's evaluation (Eldan & Li 2023, arXiv 2305.07759, section 3.1): each run continues the
same story beginnings, and a large model, as a teacher grading a student, gives each continuation a grade from
1 to 10 for grammar, creativity and consistency with the beginning, and guesses the writer's age group.

    beginnings = story_beginnings(50)                       # fixed: cut from the bundled validation stories
    records = judge_runs(runs, endpoint, beginnings)        # sample, ask, parse (one record per story)
    summary = summarize(records)                            # {run: {criterion: Estimate}}, mean and 95% CI

Answers are parsed leniently (a JSON object, or "Grammar: 7/10"-style lines); an answer that gives no valid
grades is asked once more, then recorded as malformed and left out of the means. The age groups' middle ages
(A: 3 or under -> 3, B: 4-5 -> 4.5, ...) give a mean age in years.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from machinery.evaluation.openai_api import Endpoint

CRITERIA = ("grammar", "creativity", "consistency")
AGE_GROUPS = {"A": "3 or under", "B": "4-5", "C": "6-7", "D": "8-9", "E": "10-12", "F": "13-16"}
AGE_YEARS = {"A": 3.0, "B": 4.5, "C": 6.5, "D": 8.5, "E": 11.0, "F": 14.5}  # each group's middle age
SEPARATOR = "***"
MALFORMED, OK = "malformed", "ok"

PROMPT = """You are a teacher marking a writing exercise. A student was given the beginning of a short children's \
story and wrote a continuation. Below, the text before {sep} is the given beginning and the text after {sep} is the \
student's own. The beginning may stop in the middle of a sentence, which the student had to finish.

{beginning}{sep}{continuation}

Mark only the student's part, each from 1 (very poor) to 10 (excellent):
- grammar: is it correct, fluent English?
- creativity: are its ideas and wording original, interesting and varied?
- consistency: does it carry on from the beginning (finishing the sentence that was cut), keep the characters \
and events coherent, and make a plot that makes sense?
Then guess the student's age from the writing alone: A (3 or under), B (4-5), C (6-7), D (8-9), E (10-12) \
or F (13-16).

Answer with a JSON object and nothing else, with integer marks and one letter:
{{"grammar": <1-10>, "creativity": <1-10>, "consistency": <1-10>, "age_group": "<A-F>"}}"""


def judge_prompt(beginning: str, continuation: str) -> str:
    return PROMPT.format(sep=SEPARATOR, beginning=beginning, continuation=continuation)


# --- story beginnings ---------------------------------------------------------------------------------------
def cut_beginning(story: str, fraction: float = 0.4, min_words: int = 12, max_words: int = 40) -> str:
    """The story's first `fraction` of words (between min_words and max_words), ending inside a sentence when
    it can: a cut that falls after a sentence's last word takes one word more."""
    words = list(re.finditer(r"\S+", story))
    k = max(1, min(len(words) - 1, max_words, max(min_words, round(len(words) * fraction))))
    while k < len(words) - 1 and words[k - 1].group().endswith((".", "!", "?", '."', '!"', '?"')):
        k += 1
    return story[:words[k - 1].end()]


def story_beginnings(n: int = 50, source=None) -> list[str]:
    """Fixed beginnings: the first n stories of the bundled validation set (or `source`), cut."""
    from machinery.comparison.texts import load_texts
    return [cut_beginning(story) for story in load_texts(source, max_texts=n)]


# --- parsing answers ----------------------------------------------------------------------------------------
def _mark(value) -> float | None:
    """A mark 1-10 from 7, 7.5, "7", "7/10"; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*", value)
        value = float(m.group(1)) if m else None
    if isinstance(value, (int, float)) and 1 <= value <= 10:
        return float(value)
    return None


def _age_group(value) -> str | None:
    """A letter A-F from "C", "C (6-7)", "c: 6-7", or from an age range such as "6-7"."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    m = re.match(r"([A-Fa-f])(?![A-Za-z])", text)
    if m:
        return m.group(1).upper()
    for letter, ages in AGE_GROUPS.items():
        if ages in text:
            return letter
    return None


def _json_objects(text: str):
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield obj


def _from_json(text: str) -> dict | None:
    for obj in _json_objects(text):
        keys = {re.sub(r"[^a-z]", "", str(k).lower()): v for k, v in obj.items()}
        grades = {c: _mark(keys.get(c)) for c in CRITERIA}
        grades["age_group"] = _age_group(keys.get("agegroup", keys.get("age")))
        if all(v is not None for v in grades.values()):
            return grades
    return None


def _from_lines(text: str) -> dict | None:
    grades = {}
    for c in CRITERIA:
        m = re.search(rf"\b{c}\b\W{{0,6}}(\d+(?:\.\d+)?)\s*(?:/\s*10)?", text, re.IGNORECASE)
        grades[c] = _mark(m.group(1)) if m else None
    m = re.search(r"\bage[\s_-]*group\b\W{0,6}([^\n,;]+)", text, re.IGNORECASE)
    grades["age_group"] = _age_group(m.group(1)) if m else None
    return grades if all(v is not None for v in grades.values()) else None


def parse_grades(answer: str) -> dict | None:
    """{"grammar": 7.0, "creativity": 5.0, "consistency": 6.0, "age_group": "C"} from a judge's answer (a JSON
    object anywhere in it, in a code fence or not; else "Grammar: 7/10"-style text), or None when it does not
    hold all four valid values."""
    if not isinstance(answer, str):
        return None
    return _from_json(answer) or _from_lines(answer)


# --- asking -------------------------------------------------------------------------------------------------
def grade(endpoint: Endpoint, beginning: str, continuation: str) -> dict:
    """{"status": "ok", grades..., "answers": [...]} or {"status": "malformed", "answers": [...]}: a
    malformed answer is asked once more. ApiError (unreachable, too many failures) propagates."""
    prompt, answers = judge_prompt(beginning, continuation), []
    for _ in range(2):
        answers.append(endpoint.complete(prompt))
        grades = parse_grades(answers[-1])
        if grades is not None:
            return {"status": OK, **grades, "answers": answers}
    return {"status": MALFORMED, "answers": answers}


def sample_continuations(run, beginnings: list[str], max_new_tokens: int = 200, temperature: float = 0.7,
                         seed: int = 0, device: str = "cpu") -> list[str]:
    """One continuation per beginning from the run's saved weights (seeded: the same every time)."""
    import tools
    from machinery.generation import GenerationConfig, SamplingConfig, generate

    model, tokenizer, _, _ = tools.load_model(run, device)
    return generate(model, tokenizer, beginnings, SamplingConfig(temperature=temperature, seed=seed),
                    GenerationConfig(max_new_tokens=max_new_tokens))


def judge_runs(runs: dict, endpoint: Endpoint, beginnings: list[str], max_new_tokens: int = 200,
               temperature: float = 0.7, seed: int = 0, device: str = "cpu", on_record=None) -> list[dict]:
    """One record per (run, beginning): the continuation, the judge's answers and grades. on_record(records)
    is called after each one (to save progress: an API failure later loses nothing already paid for)."""
    records = []
    for name, run in runs.items():
        continuations = sample_continuations(run.path, beginnings, max_new_tokens, temperature, seed, device)
        for i, (beginning, continuation) in enumerate(zip(beginnings, continuations)):
            record = {"run": name, "story": i, "beginning": beginning, "continuation": continuation}
            record.update(grade(endpoint, beginning, continuation))
            records.append(record)
            if on_record is not None:
                on_record(records)
    return records


# --- summary ------------------------------------------------------------------------------------------------
@dataclass
class Estimate:
    mean: float
    ci95: float  # half width of the 95% confidence interval of the mean (Student's t); nan for n < 2
    n: int


def estimate(values: list[float]) -> Estimate:
    from scipy.stats import t as student_t

    from machinery.sweeps.stats import mean, sample_var
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    half = float(student_t.ppf(0.975, n - 1)) * math.sqrt(sample_var(values) / n) if n > 1 else math.nan
    return Estimate(mean(values), half, n)


def summarize(records: list[dict]) -> dict[str, dict]:
    """{run: {"grammar": Estimate, "creativity": ..., "consistency": ..., "age": Estimate (years),
    "graded": n, "malformed": n}} over the well-formed answers."""
    summary = {}
    for name in dict.fromkeys(r["run"] for r in records):
        rows = [r for r in records if r["run"] == name]
        ok = [r for r in rows if r["status"] == OK]
        summary[name] = {c: estimate([r[c] for r in ok]) for c in CRITERIA}
        summary[name]["age"] = estimate([AGE_YEARS[r["age_group"]] for r in ok])
        summary[name]["graded"], summary[name]["malformed"] = len(ok), len(rows) - len(ok)
    return summary


def judge_columns(summary: dict[str, dict]) -> dict[str, dict]:
    """{run: {column: value}} for the comparison table: judge_<criterion> (mean), judge_<criterion>_ci95."""
    columns = {}
    for name, s in summary.items():
        row = {}
        for key in (*CRITERIA, "age"):
            row[f"judge_{key}"], row[f"judge_{key}_ci95"] = s[key].mean, s[key].ci95
        row["judge_graded"], row["judge_malformed"] = s["graded"], s["malformed"]
        columns[name] = row
    return columns
