"""Keep the TuningStudy CRD's `spec.trialTemplate` schema a copy of the TrainingJob's `spec`.

A trial template *is* a TrainingJob spec, so its schema (fields, defaults, bounds, CEL rules) is
copied verbatim from helm/dmlt/crds/trainingjobs.dmlt.io.yaml into the marked block of
helm/dmlt/crds/tuningstudies.dmlt.io.yaml, only re-indented and with its own description.
Edit the TrainingJob CRD, then run:

    python helm/sync_study_crd.py            rewrite the TuningStudy CRD
    python helm/sync_study_crd.py --check    exit 1 when it is out of date

tests/unit/test_study_crd.py fails when the two drift apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

CRDS = Path(__file__).resolve().parent / "dmlt" / "crds"
JOB_CRD = CRDS / "trainingjobs.dmlt.io.yaml"
STUDY_CRD = CRDS / "tuningstudies.dmlt.io.yaml"

BEGIN = "# BEGIN trialTemplate:"
END = "# END trialTemplate"
SOURCE_INDENT = 12
"""Indent of `spec:` under the TrainingJob schema's root properties."""
DESCRIPTION = (
    "description: >-\n"
    "  The TrainingJob spec every trial runs (the same schema as TrainingJob.spec, kept in step\n"
    "  by helm/sync_study_crd.py). The sampled values replace its trainer fields, and the\n"
    "  operator adds the trial's flags to trainer.extraArgs and the storage URL to env."
)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def job_spec_block(job_crd: str) -> list[str]:
    """The lines below `spec:` of the TrainingJob schema, at their own indent."""
    lines = job_crd.splitlines()
    start = lines.index(" " * SOURCE_INDENT + "spec:")
    block: list[str] = []
    for line in lines[start + 1 :]:
        if line.strip() and _indent(line) <= SOURCE_INDENT:
            break
        block.append(line)
    while block and not block[-1].strip():
        block.pop()
    return block


def template_block(job_crd: str, indent: int) -> list[str]:
    """The trialTemplate schema lines for a study CRD whose trialTemplate children sit at `indent`."""
    block = job_spec_block(job_crd)
    child = SOURCE_INDENT + 2
    out: list[str] = []
    skipping = False
    replaced = False
    for line in block:
        if skipping:
            if line.strip() and _indent(line) > child:
                continue
            skipping = False
        if not replaced and _indent(line) == child and line.strip().startswith("description:"):
            out += [" " * child + part for part in DESCRIPTION.splitlines()]
            replaced = skipping = True
            continue
        out.append(line)
    shift = indent - child
    return [(" " * shift + line) if line.strip() else "" for line in out]


def render(job_crd: str, study_crd: str) -> str:
    """The study CRD text with its marked trialTemplate block regenerated from the job CRD."""
    lines = study_crd.splitlines()
    begin = next(i for i, line in enumerate(lines) if line.strip().startswith(BEGIN))
    end = next(i for i, line in enumerate(lines) if line.strip().startswith(END))
    indent = _indent(lines[begin])
    new = lines[: begin + 1] + template_block(job_crd, indent) + lines[end:]
    return "\n".join(new) + "\n"


def main(argv: list[str]) -> int:
    current = STUDY_CRD.read_text()
    fresh = render(JOB_CRD.read_text(), current)
    if "--check" in argv:
        if fresh != current:
            print(f"{STUDY_CRD} is out of date: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    if fresh != current:
        STUDY_CRD.write_text(fresh)
        print(f"wrote {STUDY_CRD}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
