"""Kubernetes resource quantities: parsing and the canonical form the API server stores.

Follows k8s.io/apimachinery ``pkg/api/resource/quantity.go``: ``ParseQuantity`` (a signed
decimal number, then a binary-SI suffix ``Ki``..``Ei``, a decimal-SI suffix ``n u m k M G T P
E`` or a decimal exponent ``e3``; values finer than ``1n`` round up) and
``CanonicalizeBytes``/``String`` (the number becomes an integer mantissa with the largest
suffix that keeps it whole; binary-SI values below 1024 or not whole are written decimal-SI).
So ``0.5`` is stored as ``500m``, ``1000m`` as ``1``, ``1000`` as ``1k``, ``1024Mi`` as
``1Gi``, and ``1Gi`` stays ``1Gi``. A server that stores objects canonicalizes every quantity
field of a built-in kind on write, whatever the client sent.
"""

from __future__ import annotations

import fractions
import math
import re

PATTERN = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$")
REGEX_TEXT = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
DECIMAL_SUFFIX = {exponent: suffix for suffix, exponent in DECIMAL.items()}
BINARY_SUFFIX = {exponent: suffix for suffix, exponent in BINARY.items()}


class Invalid(ValueError):
    """Not a quantity; the message is the API server's."""


def parse(text: str) -> tuple[fractions.Fraction, str]:
    """The value and its format: ``BinarySI``, ``DecimalSI`` or ``DecimalExponent``."""
    match = PATTERN.match(text.strip()) if isinstance(text, str) else None
    if match is None or match.group(1) in ("+", "-", "."):
        raise Invalid(f"quantities must match the regular expression '{REGEX_TEXT}'")
    number, suffix = fractions.Fraction(match.group(1)), match.group(2)
    if suffix in BINARY:
        value, form = number * 2 ** BINARY[suffix], "BinarySI"
    elif suffix in DECIMAL:
        value, form = number * fractions.Fraction(10) ** DECIMAL[suffix], "DecimalSI"
    elif re.fullmatch(r"[eE][+-]?[0-9]+", suffix):
        value, form = number * fractions.Fraction(10) ** int(suffix[1:]), "DecimalExponent"
    else:
        raise Invalid(f"quantities must match the regular expression '{REGEX_TEXT}'")
    # Precision finer than nano rounds up, away from zero (quantity.go: roundUp to -9).
    nanos = value * 10**9
    if nanos.denominator != 1:
        nanos = fractions.Fraction(math.ceil(abs(nanos)) * (1 if nanos > 0 else -1))
        value = nanos / 10**9
    return value, form


def canonical(text: str) -> str:
    value, form = parse(text)
    if value == 0:
        return "0"
    if form == "BinarySI" and (abs(value) < 1024 or value.denominator != 1):
        form = "DecimalSI"
    if form == "BinarySI":
        mantissa, exponent = int(value), 0
        while mantissa % 1024 == 0 and exponent < 60:
            mantissa //= 1024
            exponent += 10
        return f"{mantissa}{BINARY_SUFFIX.get(exponent, '')}"
    mantissa_frac, exponent = value, 0
    while mantissa_frac.denominator != 1:
        mantissa_frac *= 1000
        exponent -= 3
    mantissa = int(mantissa_frac)
    while mantissa % 1000 == 0 and exponent < 18:
        mantissa //= 1000
        exponent += 3
    if form == "DecimalExponent":
        return f"{mantissa}e{exponent}" if exponent else str(mantissa)
    return f"{mantissa}{DECIMAL_SUFFIX[exponent]}"
