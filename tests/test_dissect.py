"""Describe-and-Dissect (milan_hf.dissect): every stage with tiny randomly initialised models
built from configs (BLIP, a Llama with a chat template, CLIP), the Otsu crop on known masks, the
list parsing, DnD's scoring, and `milan-hf describe --method dissect` end to end (offline on the
embedded default, and with the tiny Hub-style models)."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from milan_hf import schema
from milan_hf.cli import main as cli_main
from milan_hf.default_run import describe_default
from milan_hf.dissect import (
    DEFAULT_IMAGE_CAPTIONER,
    DEFAULT_SUMMARIZER,
    EMBEDDED_BEAM,
    ClipImageSimilarity,
    ConceptSummarizer,
    DissectSettings,
    ImageCaptioner,
    activation_rank_scores,
    attention_box,
    attention_crop,
    choose_candidate,
    otsu_threshold,
    parse_numbered_list,
    unit_activations,
)
from milan_hf.vision_models import load_vision_model
from tests.captioner_fixtures import single_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")
WORDS = ["a", "red", "blue", "square", "circle", "of", "the", "picture", "and", "stripes", "dots"]


# --- tiny models, built from configs and written to tmp --------------------------------------


def tiny_blip(folder: Path) -> Path:
    """A BLIP captioner with a 16-word WordPiece vocabulary, 32 px images."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (folder / "vocab.txt").write_text("\n".join(specials + WORDS) + "\n")
    text = dict(vocab_size=len(specials) + len(WORDS), hidden_size=16, num_hidden_layers=1,
                num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                encoder_hidden_size=16, bos_token_id=2, eos_token_id=3, sep_token_id=3,
                pad_token_id=0)  # fmt: skip
    vision = dict(hidden_size=16, image_size=32, patch_size=8, num_hidden_layers=1,
                  num_attention_heads=2, intermediate_size=32)  # fmt: skip
    torch.manual_seed(0)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=16)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    processor = BlipProcessor(
        BlipImageProcessor(size={"height": 32, "width": 32}),
        BertTokenizer(str(folder / "vocab.txt")),
    )
    processor.save_pretrained(folder)
    return folder


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def tiny_chat_lm(folder: Path, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """A one-layer Llama and a word-level tokenizer with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", *WORDS, "1.", "2.", "-", "<|user|>", "<|assistant|>"]
    vocab = {word: index for index, word in enumerate(words + ["<|system|>"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def tiny_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    text = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16, bos_token_id=0,
                eos_token_id=1, pad_token_id=1)  # fmt: skip
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, image_size=32, patch_size=8)  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(
        folder
    )
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                       ).save_pretrained(folder)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dissect_models")
    return {"blip": tiny_blip(root / "blip"), "lm": tiny_chat_lm(root / "lm"),
            "clip": tiny_clip(root / "clip")}  # fmt: skip


def solid(colour: str, size: int = 40) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


# --- stage 1: Otsu attention crops -----------------------------------------------------------


def test_otsu_threshold_splits_two_levels():
    values = np.concatenate([np.full(300, 0.1), np.full(100, 0.9)])
    threshold = otsu_threshold(values)
    assert 0.1 < threshold < 0.9
    assert otsu_threshold(np.full(5, 0.3)) == pytest.approx(0.3)  # constant: no split


def test_attention_box_keeps_the_largest_components_and_pads():
    activation = np.full((40, 40), 0.05, dtype=np.float32)
    activation[10:20, 5:15] = 1.0  # the big blob: 100 px
    activation[30:32, 30:32] = 0.9  # a speck, far smaller than half the blob: dropped
    assert attention_box(activation, padding=0.1) == (4, 9, 16, 21)  # 1 px padding each side
    binary = np.zeros((40, 40), dtype=np.uint8)
    binary[0:8, 0:8] = 1
    binary[30:38, 32:40] = 1  # as large as the first: both kept, one box around them
    assert attention_box(binary, padding=0.0) == (0, 0, 40, 38)
    assert attention_box(np.zeros((8, 8))) is None
    with pytest.raises(ValueError, match="2-D"):
        attention_box(np.zeros((2, 8, 8)))


def test_attention_crop_scales_the_mask_to_the_image():
    image = Image.fromarray(np.arange(80 * 80 * 3, dtype=np.uint8).reshape(80, 80, 3))
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[10:20, 20:30] = 1
    crop = attention_crop(image, mask, padding=0.0)
    assert crop.size == (20, 20)  # the 10 px box at twice the mask's resolution
    assert np.array_equal(np.asarray(crop), np.asarray(image)[20:40, 40:60])
    assert attention_crop(image, np.zeros((40, 40))) is image  # never fires: whole image


# --- stages 2 and 3: captions and candidate concepts ----------------------------------------


def test_numbered_list_parsing():
    reply = (
        "Sure! Here are the concepts:\n1. **Red squares**: squares painted red\n"
        '2) blue stripes (mostly)\n 3. "Dots".\n4. red squares\n\nI hope this helps.'
    )
    assert parse_numbered_list(reply) == ["red squares", "blue stripes", "dots"]
    assert parse_numbered_list(reply, limit=2) == ["red squares", "blue stripes"]
    assert parse_numbered_list("1. grass 2. sky 3. water") == ["grass", "sky", "water"]
    assert parse_numbered_list("- a dog\n* a cat\n• a bird") == ["a dog", "a cat", "a bird"]
    assert parse_numbered_list("no list here, only prose") == []
    assert parse_numbered_list("1. " + " ".join(["word"] * 12)) == []  # a sentence, not a concept


def test_image_captioner_captions_with_a_tiny_blip(tiny_models):
    captioner = ImageCaptioner(str(tiny_models["blip"]), CPU, max_new_tokens=5)
    captions = captioner.caption(
        [solid("red"), solid("blue", 24), solid("white", 50)], batch_size=2
    )
    assert len(captions) == 3
    assert all(set(caption.split()) <= set(WORDS) for caption in captions)
    with pytest.raises(FileNotFoundError, match="cannot load the image captioner"):
        ImageCaptioner(str(tiny_models["blip"] / "missing"), CPU).caption([solid("red")])


def test_summarizer_replies_through_the_chat_template(tiny_models, tmp_path):
    summarizer = ConceptSummarizer(str(tiny_models["lm"]), CPU, max_new_tokens=6)
    reply = summarizer.reply(["a red square", "the red circle"], count=3)
    assert 0 < len(reply.split()) <= 6  # six new tokens at most: the prompt is not echoed
    candidates = summarizer.candidates(["a red square", "a red square", "blue dots"], 3)
    # A random LM lists nothing parseable, so the distinct captions are the candidates.
    assert candidates == (parse_numbered_list(reply, 3) or ["a red square", "blue dots"])
    plain = tiny_chat_lm(tmp_path / "plain", chat_template=None)
    with pytest.raises(ValueError, match="no chat template"):
        ConceptSummarizer(str(plain), CPU).reply(["a"], 1)


# --- stage 5: DnD's scoring ------------------------------------------------------------------


def test_rank_scores_prefer_the_candidate_whose_images_fire_most():
    scores = activation_rank_scores(
        [np.array([9.0, 8.0, 7.0]), np.array([1.0, 2.0, 3.0]), np.array([])], top_ranks=2
    )
    # Candidate 0 holds ranks 1 and 2 of 6 images: 1 − sqrt((1 + 4) / 2) / 6.
    assert scores[0] == pytest.approx(1 - np.sqrt(2.5) / 6)
    assert scores[1] == pytest.approx(1 - np.sqrt((16 + 25) / 2) / 6)
    assert np.isnan(scores[2])
    assert choose_candidate(scores, None) == 0
    # With CLIP the two ranks are summed: (1 + 2) vs (2 + 1) ties, broken by activation.
    assert choose_candidate(scores, np.array([0.1, 0.9, np.nan])) == 0
    three = np.array([0.9, 0.8, 0.1])
    assert choose_candidate(three, np.array([0.0, 0.9, 0.5])) == 1  # 2 + 1 beats 1 + 3
    assert choose_candidate(np.array([np.nan, np.nan]), None) == -1


def test_unit_activations_are_the_spatial_max():
    model = load_vision_model(torch.nn.Conv2d(3, 2, 1), input_size=16)
    with torch.no_grad():
        model.module.weight.zero_()
        model.module.bias.zero_()
        model.module.weight[0, 0] = 1.0  # unit 0: the red channel
        model.module.weight[1, 2] = 1.0  # unit 1: the blue channel
    red, blue = solid("red", 16), solid("blue", 16)
    half = np.zeros((16, 16, 3), dtype=np.uint8)
    half[:4, :4, 0] = 255  # red only in one corner: the max still sees it
    images = [red, blue, Image.fromarray(half)]
    wrapped = load_vision_model(torch.nn.Sequential(model.module), input_size=16)
    red_unit = unit_activations(wrapped, "0", 0, images, CPU, batch_size=2)
    blue_unit = unit_activations(wrapped, "0", 1, images, CPU, batch_size=2)
    assert red_unit[0] > red_unit[1] and red_unit[2] == pytest.approx(red_unit[0])
    assert blue_unit[1] > blue_unit[0]


def test_clip_similarity_with_a_tiny_clip(tiny_models):
    clip = ClipImageSimilarity(str(tiny_models["clip"]), CPU)
    exemplars = [solid("red"), solid("darkred")]
    similarity = clip.similarities([[solid("red")], [solid("blue"), solid("navy")], []], exemplars)
    assert similarity.shape == (3,) and np.isnan(similarity[2])
    assert np.all(np.abs(similarity[:2]) <= 1.0 + 1e-6)
    same = clip.similarities([exemplars[:1]], exemplars[:1])
    assert same[0] == pytest.approx(1.0, abs=1e-5)  # an image is most similar to itself


def test_settings_are_checked_and_record_their_models():
    settings = DissectSettings()
    assert settings.image_captioner == DEFAULT_IMAGE_CAPTIONER
    assert settings.summarizer == DEFAULT_SUMMARIZER
    assert "summarizer: Qwen/Qwen2.5-0.5B-Instruct" in settings.described_by()
    offline = DissectSettings.offline()
    assert offline.models() == {"image_captioner": EMBEDDED_BEAM, "text_to_image": "probe-world"}
    assert DissectSettings.offline(image_captioner="x").summarizer == DEFAULT_SUMMARIZER
    with pytest.raises(ValueError, match="num_candidates must be a positive integer, got 0"):
        DissectSettings(num_candidates=0).check()
    with pytest.raises(ValueError, match="needs a summarizer"):
        DissectSettings(summarizer=None).check()


# --- end to end ------------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_describe_dissect_on_the_embedded_default_offline(tmp_path, monkeypatch, capsys):
    """`milan-hf describe --method dissect`: the embedded captioner's beam as candidates, the
    probe world as text-to-image; same outputs as MILAN, with the method recorded."""
    monkeypatch.setenv("MILAN_HF_CACHE", str(tmp_path / "cache"))
    few_scenes = functools.partial(describe_default, num_scenes=6, layers=("blocks.4",))
    monkeypatch.setattr("milan_hf.describer.describe_default", few_scenes)
    output = tmp_path / "out"
    status = cli_main(["describe", "--method", "dissect", "--output", str(output),
                       "--max-units", "2", "--num-beams", "4", "--dissect-candidates", "3",
                       "--dissect-images", "3"])  # fmt: skip
    assert status == 0
    rows = read_csv(output / "descriptions.csv")
    columns = list(schema.RUN_DESCRIPTION_COLUMNS)
    assert list(rows[0])[: len(columns)] == columns  # then --verify's, on by default here
    assert "faithfulness_auc" in rows[0]
    assert [(row["layer"], row["unit"]) for row in rows] == [("blocks.4", "0"), ("blocks.4", "1")]
    described_by = "dissect (image_captioner: embedded; text_to_image: probe-world)"
    assert {row["described_by"] for row in rows} == {described_by}
    assert all(row["description"] for row in rows)
    scored = [float(row["score"]) for row in rows if row["score"]]
    assert scored and all(0.0 < score <= 1.0 for score in scored)  # DnD's activation score
    record = json.loads((output / "milan_describe.json").read_text())
    assert record["settings"]["method"] == "dissect"
    assert record["settings"]["dissect"]["images_per_candidate"] == 3
    page = (output / "index.html").read_text()
    assert "Describe-and-Dissect" in page and "probe-world" in page
    saved = datasets.load_from_disk(str(output / "descriptions"))
    assert saved["description"] == [row["description"] for row in rows]


def test_describe_dissect_with_tiny_hub_models(tmp_path, tiny_models, fake_hub):
    """Every Hub stage (BLIP captions, a chat LM, CLIP) on a timm model, through the CLI."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for index in range(6):
        image = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{index}.png")
    output = tmp_path / "out"
    status = cli_main(
        ["describe", "--model", "test_efficientnet", "--layers", "blocks.1", "--images",
         str(folder), "--output", str(output), "--k", "3", "--max-units", "2",
         "--method", "dissect", "--image-captioner", str(tiny_models["blip"]),
         "--summarizer", str(tiny_models["lm"]), "--clip", str(tiny_models["clip"]),
         "--text-to-image", "probe-world", "--dissect-candidates", "2",
         "--dissect-images", "2", "--push-to-hub", "someone/dissected"]
    )  # fmt: skip
    assert status == 0
    rows = read_csv(output / "descriptions.csv")
    assert [(row["layer"], row["unit"]) for row in rows] == [("blocks.1", "0"), ("blocks.1", "1")]
    assert all(row["description"] for row in rows)
    described_by = rows[0]["described_by"]
    for stage in ("blip", "lm", "clip"):
        assert str(tiny_models[stage]) in described_by
    assert described_by.startswith("dissect (")
    # The same Hub push as MILAN's; the card names the method and its models, not MILAN's PMI.
    root = fake_hub.folder("someone/dissected")
    card = (root / "README.md").read_text()
    assert "Describe-and-Dissect" in card and str(tiny_models["lm"]) in card
    assert "argmax_d" not in card
    pushed = datasets.Dataset.from_parquet(str(next(root.glob("data/train-*.parquet"))))
    assert pushed["described_by"] == [row["described_by"] for row in rows]


def test_method_flags_are_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MILAN_HF_CACHE", str(tmp_path / "cache"))
    few_scenes = functools.partial(describe_default, num_scenes=2, layers=("blocks.4",))
    monkeypatch.setattr("milan_hf.describer.describe_default", few_scenes)
    assert cli_main(["describe", "--summarizer", "x", "--output", str(tmp_path / "o")]) == 2
    assert "--summarizer need(s) --method dissect" in capsys.readouterr().err
    assert cli_main(["describe", "--method", "dissect", "--dissect-images", "0", "--output",
                     str(tmp_path / "o")]) == 2  # fmt: skip
    assert "images_per_candidate must be a positive integer, got 0" in capsys.readouterr().err
    assert cli_main(["describe", "--method", "dissect", "--verify-rerank", "3", "--output",
                     str(tmp_path / "o")]) == 2  # fmt: skip
    assert "drop --verify-rerank" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["describe", "--method", "other"])
