"""engine.score_benchmark's named steps compose to what score_benchmark returns."""

import numpy as np

from oodbench import engine
from oodbench.config import load_catalogue
from oodbench.scorers import make_scorer
from oodbench.store import Store


def test_steps_reproduce_score_benchmark(digits_store):
    st, key = Store(digits_store["store"]), digits_store["key"]
    bench = load_catalogue().benchmark("digits")
    run = engine.build_inputs(st, key, bench)
    assert set(run.splits) == {"train", "val", "test"} and set(run.ood) == set(bench.ood)
    assert run.test.split == "test" and not run.ood_val  # ood_val only when tuning
    for method in ("msp", "knn"):  # fit-free and fitted
        res = engine.run_scorer(run, make_scorer(method))
        want = digits_store["records"][method]
        np.testing.assert_array_equal(res.id_scores, want.id_scores)
        for d in bench.ood:
            np.testing.assert_array_equal(res.ood_scores[d], want.ood_scores[d])
        test = run.test
        rec = engine.make_record(run, res, want.accuracy, test.logits.argmax(1) == test.labels)
        assert rec.method == method and rec.params == want.params
        assert set(rec.provenance) >= {"store", "overrides", "feature_files", "seconds", "tuning"}
        assert rec.provenance["feature_files"] == want.provenance["feature_files"]
    assert engine.fit_split_inputs(run, make_scorer("msp")) is None
    assert engine.fit_split_inputs(run, make_scorer("knn")) is run.inputs[bench.id_train]
