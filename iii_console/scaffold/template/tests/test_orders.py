"""The steps under test, run by iii-console's pytest plugin (fixtures iii_app and iii_steps)."""


def test_a_posted_order_is_placed_and_counted(iii_app):
    answer = iii_app.post("/orders", json={"sku": "A1", "qty": 2})
    assert answer.status_code == 202
    trace = answer.json()["trace_id"]
    iii_app.wait_for("message.processed", step="PlaceOrder", trace=trace)
    assert iii_app.state.get("orders", "A1") == {"qty": 2}


def test_a_bad_quantity_fails_the_handler(iii_steps):
    import pytest

    with pytest.raises(ValueError, match="quantity must be positive"):
        iii_steps.run("PlaceOrder", {"sku": "A1", "qty": 0})
    assert iii_steps.state.get("orders", "A1") is None
