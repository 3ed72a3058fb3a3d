"""A scorer registers from outside the package through the `oodbench.scorers` entry point."""

import sys

import numpy as np

from oodbench.scorers import Inputs, registry


def test_entry_point_plugin_is_discovered(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "demo_ood_plugin.py").write_text(
        "import numpy as np\n"
        "from oodbench.scorers import Scorer, register_scorer\n\n"
        "@register_scorer\n"
        "class Norm(Scorer):\n"
        "    name = 'demo_norm'\n"
        "    needs = ('embeds',)\n"
        "    def score(self, data):\n"
        "        return -np.linalg.norm(data.features('embeds_raw'), axis=1)\n"
    )
    dist = site / "demo_ood_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-ood-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[oodbench.scorers]\ndemo = demo_ood_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_PLUGINS_LOADED", False)
    try:
        assert "demo_norm" in registry.scorer_names()
        data = Inputs.from_arrays(labels=np.zeros(2), image_embeds=np.array([[3.0, 4.0], [0.0, 1.0]]))
        np.testing.assert_allclose(registry.make_scorer("demo_norm").score(data), [-5.0, -1.0])
    finally:
        registry._REGISTRY.pop("demo_norm", None)
        sys.modules.pop("demo_ood_plugin", None)
