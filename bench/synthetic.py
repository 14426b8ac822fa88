"""Synthetic patients for the benchmarks: a fixture case's shape with a new case ID, made-up names
(some outside Latin-1), a random height and weight, payer, product and prescriber. Every value
is invented; nothing here is a real person."""

from __future__ import annotations

import copy
import random
from datetime import date, timedelta
from typing import Any

FIRST_F = ["Dana", "Amara", "Zoë", "Ingrid", "Mei", "Priya", "Łucja", "Chiara", "Ngozi", "Aoife"]
FIRST_M = ["Tomás", "Łukasz", "Kwame", "Hiroshi", "Arjun", "Søren", "Mateo", "Dmitri", "Omar"]
LAST = ["Whitfield", "Nguyễn", "Okafor", "Brennan", "Kowalczyk", "Haddad", "Lindqvist", "Ōta"]
LAST += ["Fernández", "O'Connell", "Abernathy", "Dvořák", "Mensah", "Castellanos", "Park"]


def vary_case(
    shape: dict[str, Any], case_id: str, i: int, rng: random.Random, catalog: Any
) -> dict[str, Any]:
    """A copy of `shape` as a new synthetic patient; attachments are left as the shape has them.
    Heights and weights span BMI 18.5-45 (every dosing basis), 30% in inches and pounds as US
    clinics write them; member IDs are unique per `i`."""
    data = copy.deepcopy(shape)
    data["case_id"] = case_id
    patient = data["patient"]
    patient["first_name"] = rng.choice(FIRST_F if patient["sex"] == "F" else FIRST_M)
    patient["last_name"] = rng.choice(LAST)
    born = patient["date_of_birth"]
    born = date.fromisoformat(born) if isinstance(born, str) else born  # JSON fixtures: text
    patient["date_of_birth"] = born - timedelta(days=rng.randrange(0, 3650))  # older: still valid
    height_cm = rng.uniform(150, 195)
    weight_kg = rng.uniform(18.5, 45) * (height_cm / 100) ** 2
    if rng.random() < 0.3:
        patient["height"] = {"value": round(height_cm / 2.54, 1), "unit": "in"}
        patient["weight"] = {"value": round(weight_kg / 0.45359237, 1), "unit": "lb"}
    else:
        patient["height"] = {"value": round(height_cm), "unit": "cm"}
        patient["weight"] = {"value": round(weight_kg, 1), "unit": "kg"}
    coverage = data["coverage"]
    coverage["payer_id"] = rng.choice(sorted(catalog.payers))
    coverage["member_id"] = f"SYN{rng.randrange(10**4):04d}{i:07d}"
    coverage["group_number"] = f"{rng.randrange(10**7):07d}"
    coverage.pop("plan_name", None)
    data["request"]["product_id"] = rng.choice(sorted(catalog.products))
    prescriber = data["prescriber"]
    prescriber["first_name"] = rng.choice(FIRST_F + FIRST_M)
    prescriber["last_name"] = rng.choice(LAST)
    return data
