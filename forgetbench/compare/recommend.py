"""Which arm to pick, by a rule the report states (docs/metrics.md, "The recommendation").

Among the arms whose F is not significantly below ``-budget`` (the upper end of F's interval is at least
``-budget``), the one with the highest E; the arms whose E interval holds that best E tie with it, and the highest O
among them wins. When no arm qualifies: the arm that forgets least (highest F) among those whose E interval holds
the best E of all arms. The runner-up is the arm the same rule picks once the recommended arm is left out.

An arm is a mapping with ``E``, ``F``, ``O`` and (optionally null) ``E_ci``, ``F_ci``, as in compare.json. Without an
interval, F itself is compared with ``-budget`` and only an arm's own E "holds" a value equal to it. Equal keys fall
back to the arms' order (the command line's).
"""

from __future__ import annotations

from collections.abc import Mapping


def rule_text(budget: float, confidence: float = 0.95) -> str:
    """The rule, in words, with its budget and interval level.

    >>> rule_text(2.0)  # doctest: +NORMALIZE_WHITESPACE
    "among the arms whose F is not significantly below -2 points (the upper end of F's 95% interval is at least -2;
    --budget), the highest E; arms whose E interval holds that E tie, and the highest O among them wins; when no arm
    qualifies, the arm that forgets least among those whose E interval holds the best E"
    """
    return (f"among the arms whose F is not significantly below -{budget:g} points (the upper end of F's "
            f"{confidence:.0%} interval is at least -{budget:g}; --budget), the highest E; arms whose E interval "
            "holds that E tie, and the highest O among them wins; when no arm qualifies, the arm that forgets least "
            "among those whose E interval holds the best E")


def f_upper(arm: Mapping) -> float:
    """The upper end of F's interval, or F without one."""
    return arm["F_ci"][1] if arm.get("F_ci") else arm["F"]


def qualifies(arm: Mapping, budget: float) -> bool:
    """F is not significantly below ``-budget``.

    >>> qualifies({"F": -4.5, "F_ci": [-6.0, -1.1]}, 2.0), qualifies({"F": -4.5, "F_ci": [-6.0, -2.5]}, 2.0)
    (True, False)
    """
    return f_upper(arm) >= -budget - _slack(budget, f_upper(arm))


def _slack(*values: float) -> float:
    """Rounding room: interval ends are sums of floats (estimate + quantile of resample - estimate)."""
    return 1e-9 * max(1.0, *(abs(v) for v in values))


def holds(arm: Mapping, value: float) -> bool:
    """The arm's E interval holds ``value`` (without an interval: E equals it), up to rounding."""
    ci = arm.get("E_ci")
    if not ci:
        return abs(arm["E"] - value) <= _slack(arm["E"], value)
    slack = _slack(ci[0], ci[1], value)
    return ci[0] - slack <= value <= ci[1] + slack


def _pick(arms: Mapping[str, Mapping], budget: float) -> tuple[str, str, list[str], list[str]]:
    """(arm, case, the arms it was chosen among, the tied ones): case ``best E``, ``tie on E`` or ``none qualifies``."""
    order = {name: i for i, name in enumerate(arms)}
    qualifying = [n for n in arms if qualifies(arms[n], budget)]
    if qualifying:
        best = max(qualifying, key=lambda n: (arms[n]["E"], -order[n]))
        tied = [n for n in qualifying if n == best or holds(arms[n], arms[best]["E"])]
        pick = min(tied, key=lambda n: (-arms[n]["O"], -arms[n]["E"], order[n]))
        return pick, "tie on E" if len(tied) > 1 else "best E", qualifying, tied
    best = max(arms, key=lambda n: (arms[n]["E"], -order[n]))
    near = [n for n in arms if n == best or holds(arms[n], arms[best]["E"])]
    pick = min(near, key=lambda n: (-arms[n]["F"], -arms[n]["O"], order[n]))
    return pick, "none qualifies", near, near


def _f(arm: Mapping) -> str:
    ci = arm.get("F_ci")
    return f"F {arm['F']:+.1f}" + (f", interval up to {ci[1]:+.1f}" if ci else ", no interval")


def recommend(arms: Mapping[str, Mapping], budget: float = 2.0, confidence: float = 0.95) -> dict:
    """``{arm, rule, reason, runner_up, qualifying}``: the arm to pick under :func:`rule_text`, one sentence why,
    the runner-up (None with one arm) and the arms whose F is within the budget.

    >>> arms = {"lora": {"E": 77.7, "F": -25.4, "O": 52.3, "E_ci": [74.0, 81.0], "F_ci": [-29.0, -22.0]},
    ...         "replay": {"E": 87.3, "F": -4.5, "O": 82.8, "E_ci": [84.0, 90.0], "F_ci": [-7.0, -1.5]},
    ...         "wise": {"E": 33.0, "F": -0.9, "O": 32.1, "E_ci": [28.0, 38.0], "F_ci": [-2.5, 0.6]}}
    >>> pick = recommend(arms)
    >>> pick["arm"], pick["runner_up"], pick["qualifying"]
    ('replay', 'wise', ['replay', 'wise'])
    >>> print(pick["reason"])  # doctest: +NORMALIZE_WHITESPACE
    replay has the highest E (+87.3) of the 2 arms whose F is not significantly below -2 points
    (F -4.5, interval up to -1.5).
    """
    if not arms:
        raise ValueError("no arm to recommend")
    arm, case, among, tied = _pick(arms, budget)
    m = arms[arm]
    qualifying = [n for n in arms if qualifies(arms[n], budget)]
    if len(arms) == 1:
        reason = (f"{arm} meets the rule: its F is not significantly below -{budget:g} points ({_f(m)})."
                  if qualifying else
                  f"{arm} does not meet the rule: its F is significantly below -{budget:g} points ({_f(m)}); it is "
                  "the only arm.")
    elif case == "best E" and len(among) == 1:
        reason = (f"{arm} is the only arm whose F is not significantly below -{budget:g} points ({_f(m)}); its E is "
                  f"{m['E']:+.1f}.")
    elif case == "best E":
        reason = (f"{arm} has the highest E ({m['E']:+.1f}) of the {len(among)} arms whose F is not significantly "
                  f"below -{budget:g} points ({_f(m)}).")
    elif case == "tie on E":
        best = max(arms[n]["E"] for n in tied)
        others = ", ".join(n for n in tied if n != arm)
        reason = (f"{arm} has the highest O ({m['O']:+.1f}) of the arms within the budget whose E ties with the best "
                  f"E {best:+.1f} ({arm}, {others}: their E intervals hold it).")
    else:
        best = max(arms[n]["E"] for n in arms)
        reason = (f"No arm's F is within the budget (every F is significantly below -{budget:g} points); {arm} "
                  f"forgets least ({_f(m)}) of the {len(among)} arm{'s' * (len(among) > 1)} whose E interval holds "
                  f"the best E {best:+.1f}.")
    rest = {n: a for n, a in arms.items() if n != arm}
    runner_up = _pick(rest, budget)[0] if rest else None
    return {"arm": arm, "rule": rule_text(budget, confidence), "reason": reason, "runner_up": runner_up,
            "qualifying": qualifying}
