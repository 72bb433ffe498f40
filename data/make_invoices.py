"""Regenerate the shipped invoice-labelling examples in data/raw (deterministic, seed 7).

Run from the repository root: ``python data/make_invoices.py``. The output is committed; this
script documents how it was made. It plants a few realistic flaws (duplicates, a missing
assistant turn, stray markdown, an empty prompt, a truncated line) for the cleaning step.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = (
    "You label supplier invoices for the finance team. Reply with exactly two lines: "
    "'Category: <one of Travel, Software, Office Supplies, Utilities, Consulting>' and "
    "'Vendor: <the supplier's name>'."
)

VENDORS = {
    "Travel": ["Skyline Airways", "Harbor Hotels", "Metro Rail", "Northwind Car Rental"],
    "Software": ["Cloudnest", "Bytefield Analytics", "Pixelforge Studio", "Ledgerly"],
    "Office Supplies": ["PaperTrail Co", "Deskworks", "Inkwell Supply", "Staple Street"],
    "Utilities": ["Brightgrid Energy", "Clearwater Utilities", "Fibrelink Telecom", "Gasline"],
    "Consulting": ["Meridian Advisors", "Oakridge Partners", "Summit Legal", "Keystone Audit"],
}

ITEMS = {
    "Travel": [
        "Economy flight {a}-{b}",
        "Hotel room, {n} nights",
        "Rail pass, zone {n}",
        "Compact car rental, {n} days",
        "Airport transfer",
        "Baggage fee",
    ],
    "Software": [
        "Annual subscription, {n} seats",
        "Cloud storage {n} TB",
        "API usage tier {n}",
        "Support plan renewal",
        "License upgrade",
        "Analytics add-on",
    ],
    "Office Supplies": [
        "A4 paper, {n} reams",
        "Ballpoint pens, box of {n}",
        "Toner cartridge",
        "Desk organiser",
        "Sticky notes, {n} pads",
        "Filing cabinet",
    ],
    "Utilities": [
        "Electricity, {n} kWh",
        "Water service, {n} m3",
        "Fibre broadband",
        "Gas supply, {n} therms",
        "Line rental",
        "Meter reading fee",
    ],
    "Consulting": [
        "Advisory hours x{n}",
        "Contract review",
        "Quarterly audit fieldwork",
        "Strategy workshop",
        "Legal opinion",
        "Tax filing support",
    ],
}

CITIES = ["LHR", "JFK", "CDG", "AMS", "FRA", "MAD", "BER", "DUB"]
CUSTOMERS = ["Northwind Traders", "Contoso Ltd", "Fabrikam Inc", "Tailspin Toys", "Litware"]
CURRENCIES = ["USD", "EUR", "GBP"]


def invoice_text(rng: random.Random, vendor: str, category: str, number: int) -> str:
    """Return one invoice as plain text, in one of three layouts."""
    lines = []
    total = 0.0
    for _ in range(rng.randint(1, 3)):
        a, b = rng.sample(CITIES, 2)
        item = rng.choice(ITEMS[category]).format(a=a, b=b, n=rng.randint(1, 12))
        price = round(rng.uniform(5, 900), 2)
        total += price
        lines.append(f"- {item}: {price:.2f}")
    currency = rng.choice(CURRENCIES)
    date = f"2026-{rng.randint(1, 6):02d}-{rng.randint(1, 28):02d}"
    customer = rng.choice(CUSTOMERS)
    layout = rng.randrange(3)
    if layout == 0:
        head = [f"INVOICE #INV-{number:05d}", f"From: {vendor}", f"Bill to: {customer}", f"Date: {date}"]
    elif layout == 1:
        head = [f"{vendor.upper()}", f"Invoice no. {number}", f"Issued {date} to {customer}"]
    else:
        head = [f"Tax invoice {number} / {date}", f"Supplier: {vendor}", f"Customer: {customer}"]
    tail = [f"Total due: {currency} {total:.2f}", f"Terms: Net {rng.choice([15, 30, 45])}"]
    return "\n".join([*head, "Items:", *lines, *tail])


def example(rng: random.Random, number: int) -> dict:
    """Return one labelled chat example with a stable id."""
    category = rng.choice(list(VENDORS))
    vendor = rng.choice(VENDORS[category])
    return {
        "id": f"inv-{number:04d}",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": invoice_text(rng, vendor, category, 20000 + number)},
            {"role": "assistant", "content": f"Category: {category}\nVendor: {vendor}"},
        ],
    }


def stray_markdown(answer: str) -> str:
    """Return the answer with the bold labels and code spans a chat UI copy-paste leaves behind."""
    category, vendor = (line.split(": ", 1)[1] for line in answer.split("\n"))
    return f"**Category:** {category}\n**Vendor:** `{vendor}`"


def main() -> None:
    """Write the two shipped files."""
    rng = random.Random(7)
    rows = [example(rng, n) for n in range(1, 341)]
    # Multi-page invoices share a group so that their pages never straddle two splits.
    for n in (10, 11, 12):
        rows[n]["group"] = "inv-batch-0010"
    answer = rows[41]["messages"][2]
    answer["content"] = stray_markdown(answer["content"])
    rows[60]["messages"][2]["content"] += "  \n"  # trailing whitespace from a copy-paste
    flawed = [
        dict(rows[3]),  # exact duplicate of inv-0004
        {
            **rows[20],
            "id": "inv-0021-resent",
            "messages": [{**m, "content": m["content"].upper() + "  "} for m in rows[20]["messages"]],
        },
        {"id": "inv-9001", "messages": rows[40]["messages"][:2]},  # missing assistant turn
        {
            "id": "inv-9003",
            "messages": [rows[42]["messages"][0], {"role": "user", "content": "  "}, rows[42]["messages"][2]],
        },
        {
            "id": "inv-9004",
            "messages": [rows[43]["messages"][1], rows[43]["messages"][0], rows[43]["messages"][2]],
        },  # system not first
    ]
    first = [json.dumps(r, ensure_ascii=False) for r in rows[:170] + flawed[:3]]
    second = [json.dumps(r, ensure_ascii=False) for r in rows[170:] + flawed[3:]]
    second.insert(50, '{"id": "inv-9005", "messages": [{"role": "system", "content": "You lab')
    out = Path(__file__).parent / "raw"
    (out / "invoices_2026_h1.jsonl").write_text("\n".join(first) + "\n", encoding="utf-8")
    (out / "invoices_2026_h2.jsonl").write_text("\n".join(second) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
