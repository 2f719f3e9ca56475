"""Turn one field's crops and CNN probabilities into its table rows.

Per template field: pick the crops that make the reading (for string fields, the most
confident split of each touching group), ask ``validate.decide_field`` for the value and
status, check it against the whole-field readers, and build the ``FieldResult`` /
``DigitRecord`` rows. Pure functions of their inputs, run in the main process after the
CNN; :mod:`pipeline.assemble_pages` does whole pages, several at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pipeline.lines import line_check, read_lines
from pipeline.records import (
    DigitRecord,
    FieldCrop,
    FieldLine,
    FieldResult,
)
from pipeline.settings import RunSettings
from pipeline.templates import FormField

if TYPE_CHECKING:
    from pipeline.recognize import PageWork
    from pipeline.validate import FieldDecision

_EPS = 1e-12
# Split choice weights (see _split_score), fitted by grid search on the 568 string fields
# of 800 synthetic pages of MNIST *training* digits (bench/fit_split_choice.py): 92.3 %
# read right with the piece verifier (the grid's best, 0 / 0 / 0.25, 92.4 %: one field),
# 88.4 % before it with the count prior (0.3 / 0.3); 200 development pages: 87.1 % (83.3 %).
SPLIT_COUNT_PENALTY = 0.0
SPLIT_PIECE_COST = 0.1
SPLIT_SINGLE_WEIGHT = 0.5
# Touching digits in a string field no longer send it to review by themselves when the cut
# is sure: a score margin of SPLIT_SURE_MARGIN over any cut that reads differently (see
# choose_string_crops) and every chosen piece one digit with probability SPLIT_SURE_SINGLE
# or more. Such a field is accepted only from the stricter TOUCHING_REVIEW_BELOW (below it
# its reasons still say ``segmentation:touching``).
# Fitted on the 568 string fields of 800 pages of MNIST *training* digits (seed 9001,
# bench/fit_split_choice.py): of the 460 with touching digits, 264 pass and 1 of those is
# wrong; with 0.95 instead of 0.98, 285 pass and 3 are wrong.
SPLIT_SURE_MARGIN = 1.0
SPLIT_SURE_SINGLE = 0.9
TOUCHING_REVIEW_BELOW = 0.98
# Boxed fields: a cut variant's score adds this x the piece verifier's log-probabilities
# that its pieces are single digits (a 0 cut with its neighbour's tail reads as a confident
# 6; the verifier sees the extra ink). Fitted on the 800 pages of MNIST training digits
# (weights 0 / 0.5 / 1 / 2: review 14.2 / 13.5 / 13.3 / 13.3 %, accepted errors 12 / 13 / 13
# / 13 of ~5,000); development pages: ambiguous-cut reviews 34 -> 16, review 12.9 -> 12.3 %.
BOX_SINGLE_WEIGHT = 1.0
CUT_DOUBT_NATS = 2.3  # a cut reading differently and less than 10x less probable: review
# String fields: when the whole-string reader (models/stringnet, pipeline.lines), which never
# sees the cuts, reads the same value on its own and gives it at least this probability,
# the touching-digits and low-confidence doubts are lifted and the field's confidence is
# the higher of the two readers'. Chosen on the development pages (seed 4242; of their 51
# reviewed string fields, 0.9 / 0.95 / 0.98 / 0.99 release 27 / 22 / 18 / 15, of which
# 1 / 1 / 0 / 0 wrong) and checked on seed 5150 (26 released at 0.98, 1 wrong: a 5 both
# readers read as 3 at 0.998).
LINE_AGREE_MIN = 0.98
AGREES = "string_reader_agrees"  # a note on an accepted field, not a doubt
DISAGREES = "string_reader_disagrees"  # the string reader reads another value: review
# Boxed fields (boxes, comb, date of 3+ boxes): the boxed-field reader (models/boxnet) reads
# only the fields that would go to review for low confidence or an unsure cut between
# boxes, and nothing else; when it reads the same value on its own with at least this
# probability, those doubts are lifted. See docs/BENCHMARKS.md (boxed-field reader).
BOX_AGREE_MIN = 0.98
BOX_AGREES = "box_reader_agrees"  # a note on an accepted field, not a doubt
BOX_DOUBTS = frozenset({"low_confidence", "segmentation:ambiguous_cut"})


def choose_crops(crops: Sequence[FieldCrop], probs: np.ndarray) -> list[int]:
    """Indices (into ``crops``/``probs``) of the crops that form the reading, in order.

    ``crops`` are one field's non-empty crops and ``probs`` their rows. Boxed fields keep
    one crop per box (see :func:`choose_box_crops`). For string fields
    each connected group keeps the split hypothesis whose pieces have the highest mean
    log max-probability (see :func:`_split_score`); groups are read left to right, pieces
    by x.
    """
    if not crops:
        return []
    if crops[0].kind != "string":
        return choose_box_crops(crops, probs)[0]
    return choose_string_crops(crops, probs)[0]


def choose_string_crops(crops: Sequence[FieldCrop], probs: np.ndarray
                        ) -> tuple[list[int], float]:
    """String fields: (chosen crop indices, left to right; the split margin).

    Per group the best-scoring split hypothesis (:func:`_split_score`). The margin is the
    smallest, over groups offered several splits, of the score gap between the chosen
    hypothesis and the best one that *reads differently* (inf when no group had a real
    choice): how sure the reading is of where the touching digits were cut.
    """
    by_group: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, c in enumerate(crops):
        by_group[c.group][c.split].append(i)
    chosen: list[int] = []
    margin = float("inf")
    for g in sorted(by_group):
        splits = by_group[g]
        likely = next((len(v) for v in splits.values()
                       if any("likely" in crops[i].flags for i in v)), None)
        ranked = []
        for s in sorted(splits):
            idx = sorted(splits[s], key=lambda i: (crops[i].bbox[0], crops[i].position))
            score = _split_score(probs[idx], likely, np.array([crops[i].single for i in idx]))
            ranked.append((score, "".join(str(int(probs[i].argmax())) for i in idx), idx))
        ranked.sort(key=lambda r: -r[0])  # stable: ties keep the lower split id first
        best = ranked[0]
        chosen.extend(best[2])
        other = next((r[0] for r in ranked[1:] if r[1] != best[1]), None)
        if other is not None:
            margin = min(margin, best[0] - other)
    return chosen, margin


def _box_variants(crops: Sequence[FieldCrop], probs: np.ndarray
                  ) -> tuple[list[int], list[list[tuple[float, str, list[int]]]]]:
    """Crops of group 0, and per touching component its complete cut variants as
    (sum of log max-probabilities plus :data:`BOX_SINGLE_WEIGHT` x the piece verifier's
    log-probabilities, reading, crop indices), best first."""
    variants: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    plain = []
    for i, c in enumerate(crops):
        if c.group == 0:
            plain.append(i)
        else:
            variants[c.group][c.split].append(i)
    ranked = []
    for splits in variants.values():
        full = max(len(v) for v in splits.values())
        cand = []
        for s in sorted(splits):
            idx = sorted(splits[s], key=lambda i: crops[i].position)
            if len(idx) == full:
                p = probs[idx]
                single = np.array([crops[i].single for i in idx])
                score = float(np.sum(np.log(np.maximum(p.max(axis=1), _EPS)))
                              + BOX_SINGLE_WEIGHT * np.sum(np.log(np.maximum(single, _EPS))))
                cand.append((score, "".join(str(int(d)) for d in p.argmax(axis=1)), idx))
        cand.sort(key=lambda t: -t[0])  # stable: ties keep the default (split 0) first
        ranked.append(cand)
    return plain, ranked


def choose_box_crops(crops: Sequence[FieldCrop], probs: np.ndarray) -> tuple[list[int], bool]:
    """Boxed fields: (chosen crop indices by position, whether the cut is in doubt).

    Every crop of group 0 is kept; for each touching component (group >= 1) the cut
    variant whose crops are read most confidently and look most like single digits to the
    piece verifier (see :func:`_box_variants`; all variants cover the same boxes). The cut
    is in doubt when another variant reads differently and is not much less probable
    (within :data:`CUT_DOUBT_NATS`): then the reading rests on where the digits were cut,
    and a person should look.
    """
    plain, ranked = _box_variants(crops, probs)
    chosen = plain + [i for cand in ranked for i in cand[0][2]]
    doubt = any(other[1] != cand[0][1] and other[0] >= cand[0][0] - CUT_DOUBT_NATS
                for cand in ranked for other in cand[1:])
    return sorted(chosen, key=lambda i: crops[i].position), doubt


def _split_score(p: np.ndarray, likely: int | None, single: np.ndarray | None = None
                 ) -> float:
    """Mean log max-probability of a hypothesis' pieces, plus the piece verifier's mean
    log-probability that each piece is one whole digit (weighted), less a penalty per
    piece away from the shape-based count guess and a cost per extra piece.

    The digit model alone is no judge of the count: a merged pair can read as one
    confident digit, and halves of one digit as two confident ones. The verifier
    (``single``, see ``models.pieces``) was trained for exactly that question; the shape
    guess (width and stroke length) still arbitrates where neither is sure.
    """
    if not len(p):
        return -np.inf
    off = abs(len(p) - likely) if likely is not None else 0
    mean_lp = float(np.mean(np.log(np.maximum(p.max(axis=1), _EPS))))
    if single is not None and len(single):
        mean_lp += SPLIT_SINGLE_WEIGHT * float(np.mean(np.log(np.maximum(single, _EPS))))
    return mean_lp - SPLIT_COUNT_PENALTY * off - SPLIT_PIECE_COST * (len(p) - 1)


_PNG_STORED = [cv2.IMWRITE_PNG_COMPRESSION, 0]


def crop_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a 28x28 crop (lossless, stored without deflate: ~880 bytes).

    Deflating each crop on its own cost 25 us of the 10 us an uncompressed PNG takes, for
    ~400 bytes; the Parquet file's zstd, compressing the whole column at once, then makes
    the digits table a fifth *smaller* than with deflated crops (0.81 against 1.04 MB for
    the 64 bench pages), and spreadsheets deflate the pictures they embed anyway.
    """
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(pixels, dtype=np.uint8), _PNG_STORED)
    if not ok:
        raise ValueError("cv2.imencode failed for a crop")
    return bytes(buf.tobytes())


def _digit_rows(work: PageWork, run_id: str, crops: Sequence[FieldCrop],
                positions: Sequence[int], probs: np.ndarray) -> list[DigitRecord]:
    """The ``digits`` rows of a field's read crops (``probs``: their ``(n, 10)`` rows)."""
    # One argsort and one conversion per field, not per digit: numpy's per-call overhead
    # was most of the cost of these rows.
    top = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    digits, ps = top.tolist(), np.take_along_axis(probs, top, axis=1).tolist()
    item = work.item
    rows = []
    for crop, position, d3, p3 in zip(crops, positions, digits, ps, strict=True):
        x, y, w, h = crop.bbox
        rows.append(DigitRecord(
            run_id=run_id, source=item.source, file_sha256=item.file_sha256, page=item.page,
            field=crop.field, position=position, x=int(x), y=int(y), w=int(w), h=int(h),
            digit=d3[0], confidence=p3[0], top3_digits=tuple(d3), top3_probs=tuple(p3),
            crop_png=crop_png(crop.pixels),
        ))
    return rows


def offer_first(decision: FieldDecision, reading: str, p: float) -> FieldDecision:
    """``decision`` with a whole-field reader's ``reading`` (probability ``p``) first among
    its three alternatives."""
    alts = [(reading, p)] + [(a, c) for a, c in zip(
        decision.alternatives, decision.alternative_confidences, strict=True) if a != reading]
    return replace(decision, alternatives=tuple(a for a, _ in alts[:3]),
                   alternative_confidences=tuple(c for _, c in alts[:3]))


def check_with_line(decision: FieldDecision, line: FieldLine | None, review_below: float
                    ) -> FieldDecision:
    """A string field's decision checked against the whole-string reader (see
    :data:`LINE_AGREE_MIN`); unchanged when the line was not read.

    Agreement lifts the doubts about the cut and the digits' confidence; a different
    reading of a field that would be accepted sends it to review, and is offered first
    among the alternatives whenever it differs.
    """
    from pipeline.validate import NOTE_REASONS, STATUS_ACCEPTED, STATUS_REVIEW

    check = line_check(line, decision.value) if decision.value else None
    if check is None:
        return decision
    reading, p, p_reading = check
    if reading != decision.value:
        doubt = decision.status == STATUS_ACCEPTED
        return replace(offer_first(decision, reading, p_reading),
                       reasons=(*decision.reasons, DISAGREES) if doubt else decision.reasons,
                       status=STATUS_REVIEW if doubt else decision.status)
    if p < LINE_AGREE_MIN:
        return decision
    conf = max(decision.confidence, p)
    kept = [r for r in decision.reasons if r not in ("segmentation:touching", "low_confidence")]
    kept += (["low_confidence"] if conf < review_below else []) + [AGREES]
    doubts = [r for r in kept if r not in NOTE_REASONS]
    return replace(decision, confidence=conf, reasons=tuple(kept),
                   status=STATUS_REVIEW if doubts else STATUS_ACCEPTED)


def box_line_wanted(decision: FieldDecision, line: FieldLine | None) -> bool:
    """Whether the boxed-field reader is asked about this decision (see
    :func:`check_with_box_line`): a written field in review for nothing but
    :data:`BOX_DOUBTS`, with a line to read."""
    from pipeline.validate import NOTE_REASONS, STATUS_REVIEW

    doubts = {r for r in decision.reasons if r not in NOTE_REASONS}
    return (line is not None and decision.status == STATUS_REVIEW and bool(decision.value)
            and bool(doubts) and doubts <= BOX_DOUBTS)


def check_with_box_line(decision: FieldDecision, line: FieldLine | None,
                        reader: Callable[[np.ndarray], np.ndarray] | None) -> FieldDecision:
    """A boxed field's decision checked against the boxed-field ``reader`` (see
    :data:`BOX_AGREE_MIN`).

    Only a field in review for nothing but :data:`BOX_DOUBTS` is read (about one such
    field per page, so the reader costs little): its line's ``log_probs`` when they were
    read already (:func:`assemble_pages` reads the lines of several pages in one batch),
    else the line is read on the spot. Agreement lifts those doubts; another reading is
    offered first among the alternatives, and the field stays in review. Unchanged when
    there is no line or no reader.
    """
    from pipeline.validate import STATUS_ACCEPTED

    if reader is None or line is None or not box_line_wanted(decision, line):
        return decision
    read = line if line.log_probs is not None else read_lines([line], reader, "boxes")[0]
    check = line_check(read, decision.value)
    assert check is not None
    reading, p, p_reading = check
    if reading != decision.value:
        return offer_first(decision, reading, p_reading)
    if p < BOX_AGREE_MIN:
        return decision
    kept = [r for r in decision.reasons if r not in BOX_DOUBTS] + [BOX_AGREES]
    return replace(decision, confidence=max(decision.confidence, p), reasons=tuple(kept),
                   status=STATUS_ACCEPTED)


@dataclass(frozen=True, slots=True)
class FieldDraft:
    """A field read up to its boxed-field check: the decision and the crops it used."""

    field: FormField
    decision: FieldDecision
    used: tuple[FieldCrop, ...]
    positions: tuple[int, ...]  # digits-table positions of ``used``
    probs: np.ndarray  # (len(used), 10)
    line: FieldLine | None


def draft_field(ff: FormField, crops: Sequence[FieldCrop], probs: np.ndarray,
                settings: RunSettings, line: FieldLine | None = None) -> FieldDraft:
    """Decide one field from its crops (empty ones included) and their probabilities;
    a string field's decision is then checked against its ``line`` when read."""
    from pipeline.validate import STATUS_REVIEW, decide_field

    nonempty = [i for i, c in enumerate(crops) if not c.empty]
    sub = probs[nonempty] if nonempty else np.zeros((0, 10), np.float32)
    ink = [crops[i] for i in nonempty]
    if ff.kind == "string":
        (picked, margin), cut_doubt = choose_string_crops(ink, sub), False
    else:
        (picked, cut_doubt), margin = choose_box_crops(ink, sub), 0.0
    used = [crops[nonempty[j]] for j in picked]
    # Empty crops count when not part of a cut variant that was not chosen.
    kept = {(c.group, c.split) for c in used}
    empties = [c for c in crops if c.empty and (c.group == 0 or (c.group, c.split) in kept)]
    flag_set = {f for c in (*used, *empties) for f in c.flags}
    # (a "touching" flag comes from a used piece, so ``used`` is not empty here)
    sure_cut = ("touching" in flag_set and margin >= SPLIT_SURE_MARGIN
                and min(c.single for c in used) >= SPLIT_SURE_SINGLE)
    if sure_cut:  # cut where the verifier is sure: a note, not a doubt ...
        flag_set = (flag_set - {"touching"}) | {"touching_split"}
    flags = sorted(flag_set | ({"ambiguous_cut"} if cut_doubt else set()))
    decision = decide_field(ff, sub[picked], settings.review_below, flags)
    if sure_cut and decision.confidence < TOUCHING_REVIEW_BELOW:
        # ... unless the reading is less sure than the stricter bar for touching digits.
        decision = replace(decision, status=STATUS_REVIEW,
                           reasons=(*decision.reasons, "segmentation:touching"))
    string = ff.kind == "string"
    if string:
        decision = check_with_line(decision, line, settings.review_below)
    positions = [k if string else c.position for k, c in enumerate(used)]
    return FieldDraft(ff, decision, tuple(used), tuple(positions), sub[list(picked)],
                      None if string else line)


def finish_field(work: PageWork, draft: FieldDraft, run_id: str, model_version: str,
                 seconds: float, box_reader: Callable[[np.ndarray], np.ndarray] | None
                 ) -> tuple[FieldResult, list[DigitRecord]]:
    """A drafted field checked by the boxed-field reader (:func:`check_with_box_line`), as
    its table rows."""
    decision = check_with_box_line(draft.decision, draft.line, box_reader)
    digits = _digit_rows(work, run_id, draft.used, draft.positions, draft.probs)
    result = FieldResult(
        run_id=run_id, source=work.item.source, file_sha256=work.item.file_sha256,
        page=work.item.page, template_id=work.template_id or "", field=draft.field.name,
        kind=draft.field.kind, value=decision.value, raw_value=decision.raw_value,
        confidence=float(decision.confidence), status=decision.status,
        reasons=tuple(decision.reasons), corrected=bool(decision.corrected),
        alternatives=tuple(decision.alternatives),
        alternative_confidences=tuple(float(c) for c in decision.alternative_confidences),
        n_digits=len(draft.used), model_version=model_version, seconds=seconds,
    )
    return result, digits
