"""`mathllava data ingest|validate|select`: the curation stages on files, outside the pipeline.

    mathllava data ingest ANNOTATIONS --image-root DIR --out DIR
        reads any supported annotation format, runs the default quality suite and writes
        DIR/valid.parquet, DIR/quarantine.parquet, DIR/data_docs/ (GX Data Docs) and DIR/report.json.
        Exit 0 when the file was read (whatever was quarantined), 2 when it cannot be read.
    mathllava data validate MANIFEST.parquet --out DIR [--rules FILE]
    mathllava data select MANIFEST.parquet --out DIR --config FILE [--labelled MANIFEST.parquet]

Everything streams in batches (`--batch-size`), so memory stays flat however many rows there are.
With MLFLOW_TRACKING_URI set, counts, the report and the Data Docs page are logged to an MLflow run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _rules(path: str | None, section: str):
    from ..settings import parse, read_yaml

    if not path:
        return None
    data = read_yaml(path)
    return parse(_models()[section], (data.get("parameters") or data).get(section), section, path)


def _models():
    from .selection import SelectSettings
    from .validation import ValidationRules

    return {"validate": ValidationRules, "select": SelectSettings}


class ParquetSink:
    """Appends DataFrame batches to one parquet file, written aside and renamed into place at `close`
    (an empty table when nothing came); `abort` leaves any earlier file of that name untouched."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns, self.writer, self.rows = path, columns, None, 0
        self.partial = path.with_name(path.name + ".partial")

    def write(self, frame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if frame is None or frame.empty:
            return
        table = pa.Table.from_pandas(frame[self.columns].astype(object).where(frame[self.columns].notna(), None),
                                     preserve_index=False, schema=self._schema())
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.partial, table.schema)
        self.writer.write_table(table)
        self.rows += len(frame)

    def _schema(self):
        import pyarrow as pa

        numeric = {"width": pa.int64(), "height": pa.int64(), "image_bytes": pa.int64(), "precision": pa.int64(),
                   "complexity_label": pa.int64(), "image_ok": pa.bool_(), "clear_label": pa.bool_()}
        return pa.schema([(c, numeric.get(c, pa.string())) for c in self.columns])

    def close(self) -> None:
        import pyarrow.parquet as pq

        if self.writer is None:
            pq.write_table(self._schema().empty_table(), self.partial)
        else:
            self.writer.close()
        self.partial.replace(self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.partial.unlink(missing_ok=True)


def _log_mlflow(out: Path, report: dict, stage: str) -> None:
    import os

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return
    import mlflow

    from ..tracking import log_metrics

    with mlflow.start_run(run_name=f"data-{stage}"):
        log_metrics({k: v for k, v in report.items() if isinstance(v, (int, float))}, section="data")
        mlflow.log_dict(report, f"{stage}/report.json")
        if (out / "data_docs").is_dir():
            mlflow.log_artifacts(str(out / "data_docs"), f"{stage}/data_docs")


def _curate(batches, rules, out: Path) -> dict:
    """Validate each manifest batch (ids unique across batches too) and write valid + quarantine."""
    from .ingest import MANIFEST_COLUMNS, QUARANTINE_COLUMNS
    from .validation import StreamValidator

    out.mkdir(parents=True, exist_ok=True)
    valid = ParquetSink(out / "valid.parquet", MANIFEST_COLUMNS)
    quarantine = ParquetSink(out / "quarantine.parquet", QUARANTINE_COLUMNS)
    checker = StreamValidator(rules, out / "data_docs")
    try:
        for manifest, rejected in batches:
            good, bad = checker.feed(manifest, rejected)
            valid.write(good)
            quarantine.write(bad)
    except BaseException:
        valid.abort()
        quarantine.abort()
        raise
    valid.close()
    quarantine.close()
    checker.write_index()
    report = checker.report()
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    return report


def _print(report: dict, out: Path) -> None:
    print(f"read {report['read']} records: {report['valid']} valid, {report['quarantined']} quarantined "
          f"(failure rate {report['failure_rate']:.1%})")
    for name, v in report["per_dataset"].items():
        print(f"  {name}: {v['read']} read, {v['failed']} failed ({v['rate']:.1%})")
    for stage, reasons in report["reasons_by_stage"].items():
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            print(f"  {stage}: {n} x {reason}")
    if report.get("tasks"):
        print("  tasks: " + ", ".join(f"{k} {v}" for k, v in sorted(report["tasks"].items())))
    print(f"wrote {out / 'valid.parquet'}, {out / 'quarantine.parquet'}, {out / 'data_docs' / 'index.html'}")


def _ingest(args) -> int:
    from .ingest import ImageLimits, SourceSpec, check_spec, iter_batches
    from .readers import AnnotationError, detect_format

    try:
        spec = SourceSpec(annotations=args.annotations, image_root=args.image_root, name=args.name,
                          format=args.format, task=args.task, source=args.source)
        check_spec(spec)   # before any output is touched
        if spec.format == "auto":
            detect_format(spec.annotations)
        rules = _rules(args.rules, "validate") or _models()["validate"]()
        batches = iter_batches([spec], ImageLimits(), batch_size=args.batch_size, progress=True)
        report = _curate(batches, rules, Path(args.out))
    except (AnnotationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _print(report, Path(args.out))
    _log_mlflow(Path(args.out), report, "ingest")
    return 0


def _manifest_batches(path: str, batch_size: int):
    import pandas as pd
    import pyarrow.parquet as pq

    from .ingest import QUARANTINE_COLUMNS

    try:
        handle = pq.ParquetFile(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable parquet manifest ({err})") from None
    for batch in handle.iter_batches(batch_size=batch_size):
        yield batch.to_pandas(), pd.DataFrame(columns=QUARANTINE_COLUMNS)


def _validate(args) -> int:
    try:
        rules = _rules(args.rules, "validate") or _models()["validate"]()
        report = _curate(_manifest_batches(args.manifest, args.batch_size), rules, Path(args.out))
    except KeyError as err:
        print(f"error: {args.manifest}: not a manifest (column {err} is missing); make one with "
              f"`mathllava data ingest`", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _print(report, Path(args.out))
    _log_mlflow(Path(args.out), report, "validate")
    return 0


def _select(args) -> int:
    import pandas as pd

    from .selection import score_images, stratified_sample

    try:
        cfg = _rules(args.config, "select")
        manifest = pd.read_parquet(args.manifest)
        labelled = pd.read_parquet(args.labelled) if args.labelled else None
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scored, scorer_report, _model = score_images(manifest, cfg, labelled, progress=True)
    selection, report = stratified_sample(scored, cfg.sampling)
    report["scorer"] = {k: v for k, v in scorer_report.items() if k != "loss_by_epoch"}
    selection.to_parquet(out / "selection.parquet", index=False)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    print(f"selected {len(selection)} of {len(scored)} rows ({report['dropped_unclear']} unclear dropped); "
          f"scores: {scorer_report['method']}")
    for level, v in report["levels"].items():
        print(f"  level {level}: {v['selected']} ({v['share']:.1%}, target {v['target_share']:.1%}, "
              f"{v['available']} available)")
    for note in report["policy"]:
        print(f"  {note}")
    _log_mlflow(out, {"selected": len(selection), **report}, "select")
    return 0


def register(sub) -> None:
    data = sub.add_parser("data", help="curation stages on files: ingest, validate, select") \
        .add_subparsers(dest="action", required=True)
    ingest = data.add_parser("ingest", help="annotations + images -> valid.parquet, quarantine.parquet, Data Docs")
    ingest.add_argument("annotations", help="LLaVA JSON/JSONL, MathVista JSON, Math-V JSONL, parquet, CSV, or an "
                                            "HF datasets folder")
    ingest.add_argument("--image-root", required=True, help="the folder the records' image paths are relative to")
    ingest.add_argument("--out", required=True)
    ingest.add_argument("--format", default="auto")
    ingest.add_argument("--name", help="dataset name in reports (default: the annotation file's folder)")
    ingest.add_argument("--task", help="task for records whose metadata and source name none")
    ingest.add_argument("--source", help="one source name for every record")
    ingest.add_argument("--rules", help="a YAML file with a `validate` section (default rules otherwise)")
    ingest.set_defaults(func=_ingest)
    validate = data.add_parser("validate", help="the quality suite on a manifest parquet")
    validate.add_argument("manifest")
    validate.add_argument("--out", required=True)
    validate.add_argument("--rules")
    validate.set_defaults(func=_validate)
    select = data.add_parser("select", help="clarity/complexity scores and the stratified sample")
    select.add_argument("manifest")
    select.add_argument("--out", required=True)
    select.add_argument("--config", required=True, help="a YAML file with a `select` section (e.g. configs/local.yaml)")
    select.add_argument("--labelled", help="a manifest parquet of labelled images that trains the scorer")
    select.set_defaults(func=_select)
    for p in (ingest, validate):
        p.add_argument("--batch-size", type=int, default=20000)
