def test_add_through_a_worker(app, worker):
    # Given a worker running the tests' app
    worker("-P", "solo")
    # When a task is sent
    r = app.tasks["tests.add"].delay(2, 2)
    # Then its result comes back
    assert r.get(timeout=20) == 4
