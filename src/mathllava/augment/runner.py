"""`augment(selection, settings)`: the seed rows followed by their augmented rows, and a report.

Images with a synthetic scene go to the programmatic generator (answers computed from the scene);
with a model generator (endpoint or local) every other image gets the paper's four generators:
AskImg once per image, CompQ, RephQ and SimpQ once per seed question, each asking for the number
of outputs `per_seed` sets. Replies are parsed strictly, filtered (length, answer type, duplicates,
consistency with a judge) and become manifest rows with aug_type, parent_id and generator."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pandas as pd

from ..evaluation.runner import problem_from_row
from . import filters, parse, prompts, rationales
from .cache import ReplyCache
from .clients import make_client
from .config import GENERATORS, AugmentSettings
from .engine import Budget, Clock, Job, Stats, run_jobs
from .programmatic import augment_row, rationale_row

PROGRAMMATIC = "programmatic"


def image_digest(row: dict) -> str:
    digest = row.get("image_sha256")
    if isinstance(digest, str) and digest:
        return digest
    return hashlib.sha256(Path(row["image_path"]).read_bytes()).hexdigest()


def _has_scene(row: dict) -> bool:
    scene = row.get("scene")
    return isinstance(scene, str) and '"template"' in scene


def uses_model(row: dict, settings: AugmentSettings) -> bool:
    if settings.generator == PROGRAMMATIC:
        return False
    if settings.scenes_programmatic and _has_scene(row):
        return False
    return settings.sources is None or row.get("source") in settings.sources


def source_exemplars(rows: list[dict], k: int, seed: int) -> dict[str, list[dict]]:
    """AskImg's few-shot exemplars per source (TF-IDF + KMeans over the source's questions)."""
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(row.get("source"), []).append(row)
    out = {}
    for source, members in by_source.items():
        chosen = prompts.choose_exemplars([m["question"] for m in members], k, seed) if k else []
        out[source] = []
        for i in chosen:
            view = prompts.seed_view(members[i])
            if view["choices"] and view["answer"] in view["choices"]:
                view["answer"] = chr(ord("A") + view["choices"].index(view["answer"]))
            out[source].append(view)
    return out


def _seed_item(row: dict, question: str) -> dict:
    """A RephQ / SimpQ output: the seed's answer and type with the new wording."""
    choices = prompts.seed_view(row)["choices"]
    precision = row.get("precision")
    precision = None if precision is None or pd.isna(precision) else int(precision)
    unit = row.get("unit") if isinstance(row.get("unit"), str) else None
    return {"question": question, "answer": str(row["answer"]), "choices": choices,
            "question_type": row["question_type"], "answer_type": row["answer_type"], "precision": precision,
            "unit": unit}


def _row(parent: dict, item: dict, aug_type: str, n: int, generator: str) -> dict:
    row = dict(parent)
    keeps_answer = aug_type in ("rephrased", "underspecified", "rationale")
    row.update(id=f"{parent['id']}#{aug_type}-{n}", question=item["question"], answer=item["answer"],
               question_type=item["question_type"], answer_type=item["answer_type"], precision=item.get("precision"),
               choices=json.dumps(item["choices"], ensure_ascii=False) if item.get("choices") else None,
               unit=item.get("unit"), skills=parent.get("skills") if keeps_answer else "[]",
               question_key=parent.get("question_key") if keeps_answer else None,
               parent_id=parent["id"], aug_type=aug_type, generator=generator, rationale=item.get("rationale"))
    return row


class ModelAugmenter:
    def __init__(self, settings: AugmentSettings, cache: ReplyCache, progress: bool):
        self.settings, self.cache, self.progress = settings, cache, progress
        self.budget = Budget(settings.max_requests, settings.max_tokens)
        self.stats = Stats()
        self.drops: Counter = Counter()
        self.malformed: Counter = Counter()
        shared: dict = {}
        common = {"max_retries": settings.max_retries, "backoff": settings.backoff,
                  "concurrency": settings.concurrency, "shared": shared}
        self.client = make_client(settings.model_settings(), f"parameters.augment.{settings.generator}", **common)
        judge_cfg = settings.judge_settings()
        judge = settings.filters.consistency
        prefix = (f"parameters.augment.{settings.generator}" if judge.judge == "same"
                  else f"parameters.augment.filters.consistency.{judge.judge}")
        self.judge = make_client(judge_cfg, prefix, temperature=0.0, **common) if judge_cfg else None

    def _job(self, kind: str, prompt: str, row: dict, client, max_tokens: int) -> Job:
        return Job(kind, prompt, row["image_path"], image_digest(row), max_tokens, client)

    def generation_jobs(self, seeds: list[dict], exemplars: dict) -> list[tuple[dict, str, Job]]:
        """(seed row, generator, job) in a fixed order: per seed, AskImg (the image's first seed
        only), then CompQ, RephQ and SimpQ."""
        per_seed, max_tokens, out, asked_images = self.settings.per_seed, self.client.cfg.max_tokens, [], set()
        for row in seeds:
            digest = image_digest(row)
            if per_seed.askimg and digest not in asked_images:
                asked_images.add(digest)
                prompt = prompts.askimg(per_seed.askimg, exemplars.get(row.get("source"), []))
                out.append((row, "askimg", self._job("askimg", prompt, row, self.client, max_tokens)))
            for generator, build in prompts.PROMPTS.items():
                n = per_seed.count(generator)
                if n:
                    prompt = build(n, prompts.seed_view(row))
                    out.append((row, generator, self._job(generator, prompt, row, self.client, max_tokens)))
            if per_seed.rationale:
                prompt = prompts.rationale(prompts.seed_view(row))
                out.append((row, "rationale", self._job("rationale", prompt, row, self.client, max_tokens)))
        return out

    def candidates(self, planned, replies: dict, seen_questions: dict) -> list[tuple[dict, str, dict]]:
        """Parsed, typed, length-checked and de-duplicated pairs, (seed row, aug_type, item)."""
        rules, out = self.settings.filters, []
        for row, generator, job in planned:
            if job.key not in replies:
                continue  # failed or over budget: counted with the requests
            n = self.settings.per_seed.count(generator)
            if generator == "rationale":   # the seed's own question, answered step by step: verified, not filtered
                text = rationales.parse_reply(replies[job.key])
                reason = rationales.verify(problem_from_row(row), text)
                if reason is not None:
                    self.drops[reason] += 1
                else:
                    out.append((row, GENERATORS[generator], {**_seed_item(row, row["question"]), "rationale": text}))
                continue
            try:
                if generator in ("askimg", "compq"):
                    raw = parse.parse_items(replies[job.key], n)
                else:
                    raw = [_seed_item(row, q) for q in parse.parse_texts(replies[job.key], n)]
            except parse.Malformed as err:
                self.drops["malformed_reply"] += 1
                self.malformed[f"{generator}:{err.reason}"] += 1
                continue
            for item in raw:
                reason = filters.length_reason(item["question"], item["answer"], rules)
                if reason is None and generator in ("askimg", "compq"):
                    typed = filters.typed_answer(item)
                    reason, item = (typed, item) if isinstance(typed, str) else (None, {**typed, "unit": None})
                if reason is None:
                    reason = seen_questions[image_digest(row)].reason(item["question"], item["answer"])
                if reason is not None:
                    self.drops[reason] += 1
                    continue
                seen_questions[image_digest(row)].add(item["question"], item["answer"])
                out.append((row, GENERATORS[generator], item))
        return out

    def consistent(self, pairs: list[tuple[dict, str, dict]]) -> list[tuple[dict, str, dict]]:
        if self.judge is None:
            return pairs
        max_tokens = self.settings.filters.consistency.max_tokens
        verified = [p for p in pairs if p[1] == "rationale"]   # already checked against the known answer
        pairs = [p for p in pairs if p[1] != "rationale"]
        jobs = [self._job("judge", prompts.judge(item), row, self.judge, max_tokens) for row, _, item in pairs]
        replies = run_jobs(jobs, self.cache, self.budget, self.stats, self.settings.concurrency, self.progress,
                           "augment: consistency")
        kept = verified
        for pair, job in zip(pairs, jobs):
            if job.key not in replies:
                self.drops["unchecked"] += 1
            elif filters.agrees(pair[2], replies[job.key]):
                kept.append(pair)
            else:
                self.drops["inconsistent"] += 1
        return kept

    def run(self, seeds: list[dict], all_rows: list[dict]) -> list[dict]:
        exemplars = source_exemplars([r for r in all_rows if uses_model(r, self.settings)], self.settings.exemplars,
                                     self.settings.seed)
        planned = self.generation_jobs(seeds, exemplars)
        replies = run_jobs([job for _, _, job in planned], self.cache, self.budget, self.stats,
                           self.settings.concurrency, self.progress, "augment: generate")
        seen: dict[str, filters.ImageQuestions] = {}
        for row in all_rows:  # every seed question of an image counts, whichever generator it went to
            seen.setdefault(image_digest(row), filters.ImageQuestions(self.settings.filters.near_duplicate)).add(
                row["question"], row["answer"])
        pairs = self.consistent(self.candidates(planned, replies, seen))
        numbering: Counter = Counter()
        rows = []
        for parent, aug_type, item in pairs:
            rows.append(_row(parent, item, aug_type, numbering[(parent["id"], aug_type)], self.client.identity))
            numbering[(parent["id"], aug_type)] += 1
        return rows

    def report(self) -> dict:
        s = self.stats
        return {"requests": self.budget.sent, "cache_hits": s.cache_hits, "failed_requests": s.failed,
                "skipped_budget": s.skipped_budget, "retries": self.client.retries + (
                    self.judge.retries if self.judge is not None and self.judge is not self.client else 0),
                "prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens,
                "tokens": s.prompt_tokens + s.completion_tokens, "requests_by_kind": dict(s.by_kind),
                "stopped_by": self.budget.stopped_by, "dropped": dict(self.drops), "malformed": dict(self.malformed),
                "errors": s.errors, "judge": self.judge.identity if self.judge is not None else None}


def default_cache_dir() -> Path:
    from ..state import state_home

    return state_home() / "cache" / "augment"


def augment(selection: pd.DataFrame, settings: AugmentSettings, progress: bool | None = None
            ) -> tuple[pd.DataFrame, dict]:
    """(curated rows, report): the seeds, then each seed's augmented rows, in seed order."""
    clock = Clock()
    progress = settings.progress if progress is None else progress
    rows = selection.to_dict("records")
    model_seeds = [r for r in rows if uses_model(r, settings)]
    rng = random.Random(settings.seed)
    by_parent: dict[str, list[dict]] = {}
    scene_drops: Counter = Counter()
    from tqdm import tqdm

    for row in tqdm(rows, desc="augment: programmatic", unit="img", disable=not progress, dynamic_ncols=True):
        if not uses_model(row, settings):
            out = augment_row(pd.Series(row), settings.per_seed, rng)
            if settings.per_seed.rationale:
                rationale, reason = rationale_row(row)
                out += [rationale] if rationale else []
                scene_drops.update([reason] if reason else [])
            by_parent[row["id"]] = [{**r, "generator": PROGRAMMATIC} for r in out]
    report: dict = {"generator": PROGRAMMATIC, "seeds": len(rows), "model_seeds": len(model_seeds),
                    "dropped": dict(scene_drops)}
    if model_seeds:
        cache = ReplyCache(settings.cache_dir or default_cache_dir())
        model = ModelAugmenter(settings, cache, progress)
        for row in model.run(model_seeds, rows):
            by_parent.setdefault(row["parent_id"], []).append(row)
        model_report = model.report()
        model_report["dropped"] = dict(Counter(model_report["dropped"]) + scene_drops)
        report.update(generator=model.client.identity, cache_dir=str(cache.root), **model_report)
    augmented = [r for row in rows for r in by_parent.get(row["id"], [])]
    columns = [*selection.columns, *(["generator"] if "generator" not in selection.columns else [])]
    if any(r.get("rationale") for r in augmented) and "rationale" not in columns:
        columns.append("rationale")   # the worked solutions' text: the training target of their rows
    seeds = selection.assign(generator=None) if "generator" not in selection.columns else selection
    curated = pd.concat([seeds, pd.DataFrame(augmented, columns=columns)], ignore_index=True) if augmented else seeds
    kept = Counter(r["aug_type"] for r in augmented)
    dropped = sum(report.get("dropped", {}).values())
    model_kept = sum(r["generator"] != PROGRAMMATIC for r in augmented)
    seconds = clock.seconds()
    report.update(kept=len(augmented), kept_by_aug_type=dict(kept),
                  kept_by_generator=dict(Counter(r["generator"] for r in augmented)), dropped_total=dropped,
                  model_kept=model_kept,
                  kept_ratio=round(model_kept / (model_kept + dropped), 4) if model_kept or dropped else None,
                  seconds=round(seconds, 3),
                  requests_per_s=round(report.get("requests", 0) / seconds, 3) if seconds > 0 else None)
    return curated, report
