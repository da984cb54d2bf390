"""Bad input for every key with a range check, generated from the checks themselves.

The source is scanned for `require(condition, KEY, VALUE, ALLOWED)` calls whose condition compares
VALUE (a plain name) with a number. From each bound a value just outside it is drawn (the bound
itself when it is strict, one step past it otherwise) and set through the config on a preset that
builds the checked code; `lrlab validate`'s check must then give the line `KEY=VALUE: ALLOWED`.
A check added to a file no preset below builds, or under a key computed at run time that the
table below does not name, fails `test_every_range_check_is_exercised`.
"""

import ast
from pathlib import Path

import pytest

import lrlab
from lrlab import validate
from lrlab.errors import ConfigError
from lrlab.validate import check

SRC = Path(lrlab.__file__).parent
DIGITS = ("baseline/digits_mlp_adamw", [])
LLAMA = ("baseline/llama_tiny_adamw", ["data.max_tokens=60000"])

# The preset (and overrides) that builds each checked file.
BUILT_BY = {
    "optim/adamw.py": DIGITS,
    "optim/sgd.py": (DIGITS[0], ["optimizer=sgd"]),
    "optim/orthograd.py": ("grokking/modadd_orthograd", []),
    "optim/lowrank_adam.py": ("galore/llama_tiny_cpu", LLAMA[1]),
    "optim/frugal.py": ("frugal/llama_tiny_cpu", LLAMA[1]),
    "optim/schedule.py": DIGITS,
    "regularizers/elr.py": (DIGITS[0], ["regularizer=elr"]),
    "regularizers/nuclear.py": (DIGITS[0], ["regularizer=nuclear"]),
    "regularizers/nested_dropout.py": (DIGITS[0], ["regularizer=nested_dropout"]),
    "losses/pskd.py": (DIGITS[0], ["loss=pskd"]),
    "losses/sd_guidance.py": (DIGITS[0], ["loss=sd_guidance"]),
    "data/base.py": DIGITS,
    "data/noise.py": (DIGITS[0], ["data.noise.kind=symmetric"]),
    "data/images.py": DIGITS,
    "data/modular.py": ("baseline/modadd_mlp_adamw", []),
    "data/text.py": LLAMA,
    "data/text_classify.py": ("galore/minilm_wordnet", []),
    "data/hf_stream.py": (LLAMA[0], ["data=hf_text", "data.dataset=text", "data.tokenizer=gpt2", "data.vocab_size=50304"]),
    "models/llama.py": LLAMA,
    "adapters/allora.py": (DIGITS[0], ["adapter=allora"]),
    "adapters/ba_lora.py": (DIGITS[0], ["adapter=ba_lora"]),
    "adapters/base.py": (DIGITS[0], ["adapter=lora"]),
    "adapters/eva.py": (DIGITS[0], ["adapter=eva"]),
    "adapters/increlora.py": (DIGITS[0], ["adapter=increlora"]),
    "adapters/lift.py": (DIGITS[0], ["adapter=lift"]),
    "adapters/sara.py": (DIGITS[0], ["adapter=sara"]),
    "adapters/svfit.py": (DIGITS[0], ["adapter=svfit"]),
    "parametrizations/base.py": (DIGITS[0], ["parametrization=lowrank"]),
    "parametrizations/lowrank.py": (DIGITS[0], ["parametrization=lowrank"]),
    "parametrizations/lost.py": (DIGITS[0], ["parametrization=lost"]),
    "parametrizations/maestro.py": (DIGITS[0], ["parametrization=maestro"]),
    "parametrizations/pela.py": (DIGITS[0], ["parametrization=pela"]),
    "parametrizations/sltrain.py": (DIGITS[0], ["parametrization=sltrain"]),
    "parametrizations/sst.py": (DIGITS[0], ["parametrization=sst"]),
    "parametrizations/trp.py": (DIGITS[0], ["parametrization=trp"]),
    "validate.py": DIGITS,
}
# Keys of validate.py's table that only some presets hold.
VALIDATED_ON = {"optimizer.momentum": BUILT_BY["optim/sgd.py"], "data.seq_len": LLAMA}
# Checks whose key is computed at run time: (file, site) -> the keys it checks; the site is the
# names the enclosing loop runs over, or else the enclosing function.
DYNAMIC_KEYS = {
    ("adapters/ba_lora.py", "lambda1 lambda2 lambda3"): ["adapter.lambda1", "adapter.lambda2", "adapter.lambda3"],
    ("adapters/base.py", "check_rank"): ["adapter.r"],
    ("parametrizations/base.py", "check_rank"): ["parametrization.rank"],
    ("parametrizations/pela.py", "feature_weight logit_weight perturbation_weight"): [
        "parametrization.feature_weight", "parametrization.logit_weight", "parametrization.perturbation_weight"],
    ("sweep/study.py", "n_trials n_jobs"): ["sweep.n_trials", "sweep.n_jobs"],
    ("sweep/study.py", "seed startup_trials warmup_steps"): ["sweep.seed", "sweep.startup_trials", "sweep.warmup_steps"],
    ("models/llama.py", "check_sizes"): ["model.hidden_size", "model.intermediate_size", "model.num_hidden_layers",
                                         "model.num_attention_heads", "model.vocab_size"],
}
# Files whose range checks no config of `lrlab train` reaches, and where they are tested.
NOT_CONFIG = {"compress.py": "arguments of `lrlab compress`, not of a run (tests/test_compress.py)",
              "sweep/study.py": "settings of `lrlab sweep`, checked when a sweep starts (tests/test_sweep.py)"}


def _is_number(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)


def _bounds(condition: ast.AST, name: str) -> list[tuple[str, float, bool]]:
    """(side, bound, strict) for every comparison of `name` with a number in `condition`."""
    flip = {ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE}
    found = []
    for compare in (n for n in ast.walk(condition) if isinstance(n, ast.Compare)):
        operands = [compare.left, *compare.comparators]
        for (left, right), op in zip(zip(operands, operands[1:]), compare.ops):
            if type(op) not in flip:
                continue
            if isinstance(left, ast.Name) and left.id == name and _is_number(right):
                kind, bound = type(op), right.value
            elif isinstance(right, ast.Name) and right.id == name and _is_number(left):
                kind, bound = flip[type(op)], left.value
            else:
                continue
            found.append(("lower" if kind in (ast.Gt, ast.GtE) else "upper", bound, kind in (ast.Gt, ast.Lt)))
    return found


def _outside(side: str, bound, strict: bool, integer: bool):
    """The value just past a bound: the bound itself when strict, else one step (½ past a real bound
    of a real value, 1 otherwise)."""
    if strict:
        return bound
    step = 0.5 if isinstance(bound, float) and not integer else 1
    return bound - step if side == "lower" else bound + step


def _mutant_copies(tree: ast.AST) -> set[int]:
    """Under `make mutation` the package is mutmut's copy, where each function keeps its name and
    body beside copies named `x_NAME__mutmut_orig` and `x_NAME__mutmut_N` (its mutants): the ids
    of the nodes inside those copies, which are not the code's own checks."""
    return {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and "__mutmut_" in f.name
            for n in ast.walk(f)}


def _site(tree: ast.AST, call: ast.Call) -> str:
    """What names a check whose key is computed: the enclosing function, or the names its loop runs over."""
    for node in ast.walk(tree):
        if isinstance(node, ast.For) and isinstance(node.iter, ast.Tuple) and any(n is call for n in ast.walk(node)):
            return " ".join(elt.value if isinstance(elt, ast.Constant) else elt.elts[0].value for elt in node.iter.elts)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(n is call for n in ast.walk(node)):
            return node.name
    raise AssertionError(f"no site for the check at line {call.lineno}")


def _rejects(condition: ast.AST, name: str, value, namespace: dict) -> bool:
    """Whether `condition` is false for `name = value` (true when it reads other names too, which
    only the running code knows: its bounds on `name` are then taken as they stand)."""
    try:
        return not eval(compile(ast.Expression(condition), "<check>", "eval"), namespace, {name: value})
    except NameError:
        return True


def _is_integer(condition: ast.AST) -> bool:
    text = ast.unparse(condition)
    return "_is_int" in text or ("isinstance" in text and "int" in text)


def require_checks() -> list[tuple[str, str, list, str | None]]:
    """(file, key, [values outside the range], allowed text or None when computed) per `require`."""
    checks = []
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(SRC))
        tree = ast.parse(path.read_text())
        skip = _mutant_copies(tree)
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "require"
                     and len(n.args) == 4 and id(n) not in skip):
            condition, key, value, allowed = call.args
            if not isinstance(value, ast.Name) or not (bounds := _bounds(condition, value.id)):
                continue
            bad = [v for v in (_outside(side, bound, strict, _is_integer(condition)) for side, bound, strict in bounds)
                   if _rejects(condition, value.id, v, {})]
            text = allowed.value if isinstance(allowed, ast.Constant) else None
            if isinstance(key, ast.Constant):
                checks.append((rel, key.value, bad, text))
            else:
                for name in DYNAMIC_KEYS.get((rel, _site(tree, call)), [f"<computed at {rel}:{call.lineno}>"]):
                    checks.append((rel, name, bad, text))
    return checks


def validation_checks() -> list[tuple[str, str, list, str | None]]:
    """The same for the table `validate.CHECKS` (key, predicate lambda, what is allowed), which
    the runner applies to the composed config before building anything."""
    tree = ast.parse((SRC / "validate.py").read_text())
    table = next(n.value for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "CHECKS")
    checks = []
    for key, predicate, allowed in (row.elts for row in table.elts):
        if isinstance(predicate, ast.Lambda) and (bounds := _bounds(predicate.body, predicate.args.args[0].arg)):
            name = predicate.args.args[0].arg
            bad = [v for v in (_outside(side, bound, strict, _is_integer(predicate.body)) for side, bound, strict in bounds)
                   if _rejects(predicate.body, name, v, vars(validate))]
            text = f"must be {allowed.value}" if isinstance(allowed, ast.Constant) else None
            checks.append(("validate.py", key.value, bad, text))
    return checks


CHECKS = require_checks() + validation_checks()
VALIDATED_KEYS = {key for rel, key, *_ in CHECKS if rel == "validate.py"}
CASES = [(rel, key, value, text) for rel, key, values, text in CHECKS if rel not in NOT_CONFIG for value in values]


def test_every_range_check_is_exercised():
    files = {rel for rel, *_ in CHECKS}
    assert files - set(NOT_CONFIG) <= set(BUILT_BY), files - set(NOT_CONFIG) - set(BUILT_BY)
    assert not [key for _, key, *_ in CHECKS if key.startswith("<computed")]
    assert {("optim/sgd.py", "optimizer.momentum"), ("optim/lowrank_adam.py", "optimizer.rank"),
            ("regularizers/elr.py", "regularizer.elr.beta"), ("validate.py", "trainer.max_steps")} <= {
        (rel, key) for rel, key, *_ in CHECKS}


def first_error(preset: str, overrides: list[str], setting: str) -> str | None:
    """The line `lrlab validate` gives for the preset with `setting` (added with `+` when the preset
    lacks the key), or else the error of the data module's setup (where the data are read)."""
    from lrlab.build import build_parts
    from lrlab.train import compose

    line = check(preset, [*overrides, setting])
    if line is not None and line.startswith("Could not override"):
        setting = "+" + setting
        line = check(preset, [*overrides, setting])
    if line is not None:
        return line
    datamodule, _ = build_parts(compose([f"experiment={preset}", *overrides, setting], run_dir="/nonexistent"))
    try:
        datamodule.setup("fit")
    except ConfigError as err:
        return str(err)
    return None


@pytest.mark.parametrize("rel, key, value, allowed", CASES, ids=[f"{key}={value}" for _, key, value, _ in CASES])
def test_out_of_range_value_is_one_line_naming_the_key(rel, key, value, allowed):
    """The line names the key and the value; it says what the check allows, unless validate.py's
    table, which runs first, holds the same key."""
    preset, overrides = VALIDATED_ON.get(key, BUILT_BY[rel]) if rel == "validate.py" else BUILT_BY[rel]
    line = first_error(preset, overrides, f"{key}={value!r}")
    expected = f"{key}={value!r}: "
    assert line is not None and line.startswith(expected), line
    assert allowed is None or line == expected + allowed or key in VALIDATED_KEYS, line
