"""Description properties (part of speech, length, word diversity) and the analysis curves."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from milan_hf.analysis import (
    PROPERTIES,
    RANDOM,
    analyze_descriptions,
    description_properties,
    layer_shares,
    property_order,
    save_analysis,
    word_diversity,
)
from milan_hf.part_of_speech import LexiconTagger, load_tagger


@pytest.fixture(scope="module")
def tagger() -> LexiconTagger:
    return load_tagger("lexicon")


@pytest.mark.parametrize(
    "description, adjectives, nouns, prepositions",
    [
        ("red circles in the top half", 1, 3, 1),
        ("printed text near the left side", 1, 3, 1),
        ("vertically striped hexagonal tiles", 2, 1, 0),
        ("either hoops or cherry red patches", 2, 2, 0),
        ("dotted squares above green triangles", 2, 2, 1),
        ("no clear concept", 1, 1, 0),
    ],
)
def test_lexicon_tags_hand_made_descriptions(tagger, description, adjectives, nouns, prepositions):
    tags = [tag for _, tag in tagger.tag(description)]
    assert tags.count("ADJ") == adjectives, tagger.tag(description)
    assert tags.count("NOUN") == nouns, tagger.tag(description)
    assert tags.count("ADP") == prepositions, tagger.tag(description)


def test_unknown_words_fall_to_suffix_rules(tagger):
    tags = dict(tagger.tag("slowly glowing velvety zebras"))
    assert tags == {"slowly": "ADV", "glowing": "VERB", "velvety": "ADJ", "zebras": "NOUN"}


def test_auto_tagger_says_which_it_is():
    tagger = load_tagger()
    assert "spaCy" in tagger.name or "lexicon" in tagger.name
    with pytest.raises(ValueError, match="'nltk'"):
        load_tagger("nltk")


def test_properties_of_hand_made_descriptions(tagger):
    texts = ["red circles", "red circles in the top half of the image", "text"]
    properties = description_properties(texts, tagger)
    assert set(properties) == set(PROPERTIES)
    assert properties["length"] == [2.0, 9.0, 1.0]
    assert properties["prepositions"] == [0.0, 2.0, 0.0]
    assert properties["word_diversity"][2] == 0.0  # one word: nothing to differ from
    assert 0.0 < properties["word_diversity"][0] <= properties["word_diversity"][1]


def test_word_diversity_is_the_largest_distance():
    embeddings = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0]),
                  "c": torch.tensor([-1.0, 0.0])}  # fmt: skip
    assert word_diversity(["a", "b"], embeddings) == pytest.approx(1.0)
    assert word_diversity(["a", "b", "c"], embeddings) == pytest.approx(2.0)
    assert word_diversity(["a", "a"], embeddings) == 0.0


def test_order_and_layer_shares():
    assert property_order([1.0, 3.0, 2.0]) == [1, 2, 0]
    shares = layer_shares(["l1", "l1", "l2"], {"nouns": [0.0, 2.0, 1.0], "length": [1.0, 5.0, 3.0]})
    assert shares == {"l1": {"nouns": 0.5, "length": 0.5}, "l2": {"nouns": 1.0, "length": 0.0}}


class Pooled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, pixels):
        return self.head(torch.relu(self.features(pixels)).mean(dim=(2, 3)))


def test_analysis_curves_and_figure(tmp_path, tagger):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(10)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    dataset = datasets.Dataset.from_dict({"image": images, "label": [0, 1] * 5}, features=features)
    descriptions = datasets.Dataset.from_dict({
        "layer": ["features"] * 4, "unit": [0, 1, 2, 3],
        "description": ["red circles", "text", "blue squares on the left side", "stripes"],
    })  # fmt: skip

    def transform(image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)

    result = analyze_descriptions(Pooled(), descriptions, dataset, transform=transform,
                                  num_points=None, tagger=tagger, progress=False)  # fmt: skip
    assert set(result.curves) == {*PROPERTIES, RANDOM}
    for curve in result.curves.values():
        assert curve.num_ablated == [0, 1, 2, 3, 4]
        assert curve.accuracy[0] == result.curves[RANDOM].accuracy[0]
        assert curve.accuracy[-1] == result.curves[RANDOM].accuracy[-1]  # all four ablated
    assert result.curves["prepositions"].order[0] == ("features", 2)
    files = save_analysis(result, tmp_path)
    assert files["figure"].stat().st_size > 1000
    assert files["json"].is_file()
