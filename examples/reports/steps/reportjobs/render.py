"""A report's three files: the chart (matplotlib, Agg: no display), the PDF (fpdf2) and the HTML (Jinja2)."""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: a worker has no display

import matplotlib.pyplot as plt
from fpdf import FPDF
from jinja2 import Environment, FileSystemLoader, select_autoescape

from reportjobs.sales import Sales, money

#: DejaVu Sans ships with matplotlib: a Unicode font for the PDF (the PDF core fonts are Latin-1 only).
FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
TEMPLATES = Path(__file__).resolve().parent / "templates"


def chart(sales: Sales) -> bytes:
    """Revenue per day as a PNG."""
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=110)
    try:
        days = [d for d, _ in sales.by_day]
        values = [c / 100 for _, c in sales.by_day]
        colors = ["#4C72B0" if d.weekday() < 5 else "#DD8452" for d in days]
        ax.bar(days, values, color=colors, width=0.8)
        if not days:
            # No sale in the period: its dates along the bottom and a word in the middle, not a bare 0–1 grid.
            ax.set_xlim(sales.start - dt.timedelta(days=0.5), sales.end + dt.timedelta(days=0.5))
            ax.set_ylim(0, 1)
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no sales in this period", transform=ax.transAxes, ha="center", va="center", color="#777777")
        ax.set_title(f"Revenue per day, {sales.start} – {sales.end}")
        ax.set_ylabel("revenue")
        ax.grid(axis="y", alpha=0.3)
        fig.autofmt_xdate()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def pdf(sales: Sales, title: str, chart_png: bytes) -> bytes:
    doc = FPDF()
    doc.add_font("DejaVu", "", str(FONTS / "DejaVuSans.ttf"))
    doc.add_font("DejaVu", "B", str(FONTS / "DejaVuSans-Bold.ttf"))
    # DejaVu has Latin, Greek, Cyrillic and more, not CJK: a TTF that has them fills the gaps.
    fallback = os.environ.get("REPORTS_FALLBACK_FONT")
    if fallback:
        doc.add_font("Fallback", "", fallback)
        doc.set_fallback_fonts(["Fallback"], exact_match=False)
    doc.set_title(title)
    doc.add_page()
    doc.set_font("DejaVu", "B", 16)
    doc.cell(0, 10, title, new_x="LMARGIN", new_y="NEXT")
    doc.set_font("DejaVu", "", 11)
    doc.cell(0, 7, f"Period: {sales.start} to {sales.end}", new_x="LMARGIN", new_y="NEXT")
    doc.cell(0, 7, f"Orders: {sales.orders:,}", new_x="LMARGIN", new_y="NEXT")
    doc.cell(0, 7, f"Revenue: {money(sales.total_cents)}", new_x="LMARGIN", new_y="NEXT")
    doc.ln(3)
    doc.image(io.BytesIO(chart_png), w=doc.epw)
    doc.ln(3)
    doc.set_font("DejaVu", "B", 11)
    doc.cell(0, 8, "Top customers", new_x="LMARGIN", new_y="NEXT")
    doc.set_font("DejaVu", "", 10)
    with doc.table(col_widths=(60, 20, 30), text_align=("LEFT", "RIGHT", "RIGHT")) as table:
        table.row(["Customer", "Orders", "Revenue"])
        for name, count, cents in sales.top_customers:
            table.row([name, f"{count:,}", money(cents)])
    return bytes(doc.output())


def html(sales: Sales, title: str, chart_png: bytes) -> bytes:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    env.filters["money"] = money
    page = env.get_template("report.html").render(title=title, sales=sales, chart=base64.b64encode(chart_png).decode("ascii"))
    return page.encode("utf-8")
