"""A search space in Hydra's sweep syntax, as optuna distributions.

Each entry is `KEY: SWEEP` as Hydra's sweepers read it (`hydra.sweeper.params`):
- `interval(a, b)`: a float in [a, b] (an int when a and b are ints; `int(interval(a, b))` too);
- `tag(log, interval(a, b))`: the same, log-uniform;
- `range(start, stop[, step])`: the ints start, start + step, ... below stop (a float step: floats);
- `choice(x, y, ...)` or `x,y,...`: one of the values;
- a plain value: fixed, not searched.
A trial's values become overrides `KEY=VALUE` of the run it trains.
"""

import math

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from lrlab.errors import ConfigError

SYNTAX = "interval(a, b), tag(log, interval(a, b)), range(start, stop, step), choice(x, y, ...) or x,y"


def parse(params: dict) -> tuple[dict[str, BaseDistribution], list[str]]:
    """(distributions of the searched keys, overrides of the fixed ones) of `params` {key: sweep}."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    searched, fixed = {}, []
    for key, text in params.items():
        try:
            override = parser.parse_override(f"{key}={text}")
        except Exception as err:  # Hydra's grammar error, several lines
            raise ConfigError(f"sweep.params.{key}", text, f"not a sweep: use {SYNTAX} "
                              f"({str(err).strip().splitlines()[0]})") from None
        if not override.is_sweep_override():
            fixed.append(f"{key}={override.get_value_element_as_str()}")
        else:
            searched[key] = distribution(override, f"sweep.params.{key}", text)
    return searched, fixed


def distribution(override, key: str, text) -> BaseDistribution:
    """The optuna distribution of one Hydra sweep override."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    sweep = override.value()
    log = "log" in (getattr(sweep, "tags", None) or set())
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if not (low < high) or (log and low <= 0):
            raise ConfigError(key, text, "an interval with low < high (and low > 0 on a log scale)")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(key, text, "a range with at least one value")
        if all(isinstance(v, int) for v in values):
            return IntDistribution(values[0], values[-1], step=int(sweep.step), log=False) if len(values) > 1 \
                else CategoricalDistribution(values)
        return CategoricalDistribution(values)
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(list(override.sweep_iterator()))
    raise ConfigError(key, text, f"not a searchable sweep: use {SYNTAX}")


def overrides(values: dict) -> list[str]:
    """`KEY=VALUE` for each of a trial's values (floats written exactly)."""
    return [f"{key}={repr(value) if isinstance(value, float) else value}" for key, value in values.items()]


def grid(space: dict[str, BaseDistribution], key: str = "sweep.sampler") -> dict[str, list]:
    """Every value of each key, for the grid sampler (choices and ranges only)."""
    values = {}
    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            values[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            values[name] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise ConfigError(key, "grid", f"needs choice() or range() values; {name} is an interval")
    return values


def grid_size(values: dict[str, list]) -> int:
    return math.prod(len(v) for v in values.values())


def bounds(space: dict[str, BaseDistribution]) -> dict[str, list]:
    """Values of each key that a trial may take and that can be known before the search: an
    interval's bounds, every choice."""
    known = {}
    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            known[name] = list(dist.choices)
        else:
            known[name] = [dist.low, dist.high]
    return known

