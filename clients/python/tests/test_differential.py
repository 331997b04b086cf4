"""Beyond the corpus: random inputs built from the characters the rules treat specially,
normalised by this package and by the Rust implementation (`flagshare hash`), which must
agree on every one: the same normal form and digest, or both refuse it."""

import os
import random
import subprocess

import pytest

from flagshare_client import ConsortiumKey, Digester, InvalidIdentifier, normalize

from serve import flagshare_binary

# No line breaks (the CLI prints one line per identifier) and no NUL (not in an argv).
TRICKY = [
    "a", "Z", "0", "9", "f", "@", ".", "+", "-", ":", "_", " ", "\t", "\xa0", "\u3000", "\u2009",
    "\xdf", "\u0130", "\u0131", "\ufb01", "\uff21", "\uff41", "\u0301", "\u03a3", "\u03c2", "\xe9",
    "\u13a0", "\uab70", "\u212a", "[", "]", "%", "\u0661", "\U0001f600", "\u200b", "\ufeff",
    "\x1c", "\x01", "\u01c5", "\u0390", "\u1e9e", "\u2460", "\u00bd", "(", ")", "#", "x", "/",
]
VALID_NUMBERS = ["+447400123456", "+441212345678", "+33612345678", "+33123456789", "+12015550123", "+4915123456789"]
DIGITS = list("0123456789") + [" ", "-", "(", ")", ".", "+", "x", "\u00a0", "\u0661", "\uff10"]


def text(rng, alphabet, low, high):
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def inputs(kind, rng, n):
    for _ in range(n):
        if kind == "email":
            yield f"{text(rng, TRICKY, 0, 6)}@{text(rng, TRICKY, 0, 5)}.{rng.choice(['com', 'de', 'Co', text(rng, TRICKY, 0, 3)])}"
        elif kind == "username":
            yield f"{text(rng, TRICKY, 0, 4)}:{text(rng, TRICKY, 0, 8)}"
        elif kind == "phone":
            if rng.random() < 0.5:
                yield rng.choice(["+44", "+1", "0", "+33 ", ""]) + text(rng, DIGITS, 4, 14)
            else:
                # A real number, spelled with random separators and now and then a slip.
                number = rng.choice(VALID_NUMBERS)
                if rng.random() < 0.5:
                    number = "0" + number[3:]  # the national form of a +44 or +33 number, roughly
                spelled = "".join(c + (rng.choice(DIGITS[10:]) if rng.random() < 0.2 else "") for c in number)
                yield spelled
        elif kind == "ip_address":
            groups = [rng.choice(["0", "1", "ffff", "00", "010", "255", "256", "abc", "", "1.2.3.4"]) for _ in range(rng.randint(2, 9))]
            yield rng.choice(["", "["]) + rng.choice([":", ".", "::"]).join(groups) + rng.choice(["", "]", "%1"])
        else:
            yield text(rng, TRICKY, 0, 10)


@pytest.mark.parametrize("kind,region", [
    ("email", None), ("username", None), ("device_id", None), ("other", None),
    ("phone", None), ("phone", "GB"), ("phone", "FR"), ("phone", "US"), ("ip_address", None),
])
def test_python_agrees_with_the_rust_cli(tmp_path, kind, region):
    key_path = tmp_path / "consortium.key"
    key_path.write_text('format = 1\nkey_id = 1\nkey = "' + "5a" * 32 + '"\n')
    digester = Digester(ConsortiumKey.load(key_path))
    rng = random.Random(f"{kind}/{region}/{os.environ.get('FLAGSHARE_DIFF_SEED', '')}")
    raws = [raw for raw in inputs(kind, rng, 1500) if not raw.startswith("-")]
    args = [str(flagshare_binary()), "hash", "--key", str(key_path), "--kind", kind]
    if region:
        args += ["--region", region]
    result = subprocess.run([*args, "--", *raws], capture_output=True, text=True, timeout=120)
    rust = result.stdout.split("\n")[:-1]
    python, accepted = [], []
    for raw in raws:
        try:
            normal = normalize(kind, raw, region)
        except InvalidIdentifier:
            continue
        python.append(f"{normal}\t{digester.digest_normalized(kind, normal).hex()}")
        accepted.append(raw)
    n_refused = len(raws) - len(python)
    # The CLI prints the valid ones in order and exits non-zero when any was refused.
    assert (result.returncode != 0) == (n_refused > 0), result.stderr[-500:]
    if python != rust:
        # Find the first input on which they disagree, one CLI call per input.
        for raw in raws:
            alone = subprocess.run([*args, "--", raw], capture_output=True, text=True, timeout=30)
            theirs = alone.stdout.rstrip("\n") if alone.returncode == 0 else "refused: " + alone.stderr.strip()
            try:
                normal = normalize(kind, raw, region)
                ours = f"{normal}\t{digester.digest_normalized(kind, normal).hex()}"
            except InvalidIdentifier as err:
                ours = f"refused: {err}"
            assert ours.startswith("refused") == theirs.startswith("refused") and (
                ours.startswith("refused") or ours == theirs
            ), f"{raw!r} (region {region}): python {ours!r}, rust {theirs!r}"
        raise AssertionError("outputs differ but no single input does")
    # The inputs reach both outcomes, so the comparison means something.
    assert 0 < len(python) < len(raws) or kind == "other"
