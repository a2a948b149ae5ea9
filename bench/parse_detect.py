"""Benchmark the parse and detect stages over the shared mail corpus and the sample mails.

Prints messages per second for parse + detect, and the ratio of its cost to
a bare `email.message_from_bytes` of the same RFC 5322 bytes in the same
run. Outlook .msg files have no bare counterpart in the email package, so
they get a rate of their own. With --profile, cProfile's top functions show
where the time goes.

    .venv/bin/python bench/parse_detect.py [--rounds N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import email
import mailbox
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from syncd.detect import find_codes  # noqa: E402
from syncd.parse import parse_item  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus"
SAMPLES = REPO / "samples" / "mail"

# A 3 MB message of 3,041 MIME parts whose bare parse is nearly half of the
# corpus total, and which repeats one HTML part 995 times. The ratio is
# printed once more without it, as the figure for typical mail.
OUTLIER = "flanker/enclosed-endless.eml"

Mail = tuple[str, str, bytes]


def load_mails() -> list[Mail]:
    """Return (name, format, bytes) for every eml, msg and mbox message of the corpus and the samples."""
    mails: list[Mail] = []
    manifest = CORPUS / "MANIFEST.tsv"
    if manifest.is_file():
        for line in manifest.read_text(encoding="utf-8").splitlines()[1:]:
            columns = line.split("\t")
            path, file_format = columns[0], columns[5]
            if file_format in ("eml", "msg"):
                mails.append((path, file_format, (CORPUS / path).read_bytes()))
            elif file_format == "mbox":
                box = mailbox.mbox(CORPUS / path, create=False)
                mails += [(f"{path}#{index}", "eml", box.get_bytes(key)) for index, key in enumerate(box.keys())]
                box.close()
    else:
        print(f"note: mail corpus not found at {CORPUS}; only the sample mails are measured")
    for path in sorted(SAMPLES.iterdir()):
        if path.suffix in (".eml", ".msg"):
            mails.append((f"samples/{path.name}", path.suffix[1:], path.read_bytes()))
    return mails


def parse_and_detect(mails: list[Mail]) -> None:
    for _, file_format, raw in mails:
        find_codes(parse_item(raw, file_format))


def bare_parse(mails: list[Mail]) -> None:
    for _, _, raw in mails:
        email.message_from_bytes(raw)


def timed(run: Callable[[list[Mail]], None], mails: list[Mail], rounds: int) -> float:
    """Return the median seconds of `rounds` runs of `run` over `mails`."""
    durations = []
    for _ in range(rounds):
        started = time.perf_counter()
        run(mails)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)


def slowest(mails: list[Mail], count: int) -> list[tuple[float, str]]:
    result = []
    for name, file_format, raw in mails:
        started = time.perf_counter()
        find_codes(parse_item(raw, file_format))
        result.append((time.perf_counter() - started, name))
    return sorted(result, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each measurement; the median is printed")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions of one run")
    arguments = parser.parse_args()

    mails = load_mails()
    rfc5322 = [mail for mail in mails if mail[1] == "eml"]
    outlook = [mail for mail in mails if mail[1] == "msg"]
    # One warm-up run fills caches (compiled patterns, codec lookups, imports).
    parse_and_detect(mails)

    bare = timed(bare_parse, rfc5322, arguments.rounds)
    full = timed(parse_and_detect, rfc5322, arguments.rounds)
    msg = timed(parse_and_detect, outlook, arguments.rounds)
    megabytes = sum(len(raw) for _, _, raw in rfc5322) / 1e6

    print(f"RFC 5322 messages: {len(rfc5322)} ({megabytes:.1f} MB), median of {arguments.rounds} runs")
    print(f"  email.message_from_bytes:  {bare:7.3f} s  {len(rfc5322) / bare:8.0f} messages/s")
    print(f"  parse + detect:            {full:7.3f} s  {len(rfc5322) / full:8.0f} messages/s")
    print(f"  ratio parse + detect / bare parse: {full / bare:.2f}")
    typical = [mail for mail in rfc5322 if mail[0] != OUTLIER]
    if len(typical) < len(rfc5322):
        typical_ratio = timed(parse_and_detect, typical, arguments.rounds) / timed(bare_parse, typical, arguments.rounds)
        print(f"  the same ratio without {OUTLIER}: {typical_ratio:.2f}")
    print(f"Outlook .msg files: {len(outlook)}")
    print(f"  parse + detect:            {msg:7.3f} s  {len(outlook) / msg:8.0f} messages/s")
    print("Slowest messages (parse + detect, one run):")
    for seconds, name in slowest(mails, 5):
        print(f"  {seconds:7.3f} s  {name}")

    if arguments.profile:
        profile = cProfile.Profile()
        profile.runcall(parse_and_detect, rfc5322)
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
