"""Seq-DeepFake's sequence task and SeqFakeFormer: tokens, targets, loss, decoding, scores, the model.

Where a test compares with the authors' code (github.com/rshaojimmy/SeqDeepFake: ``datasets/dataset.py``
builds the targets, ``test.py``'s ``evalute_transformer`` decodes), the reference behaviour is restated
in the test in our own words.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlcdf.config import TrainConfig
from mlcdf.data.prepared import SplitTable
from mlcdf.errors import MlcdfError
from mlcdf.models import count_parameters, create_model, meta_model, model_info
from mlcdf.models.seqfakeformer import GaussianCrossAttention, SeqFakeFormer, sequence_tokens, sine_position_encoding
from mlcdf.tasks import MultiLabelTask, SequenceTask, create_task

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = ("nose", "eye", "eyebrow", "lip", "hair")


def table(sequences):
    return SplitTable([f"{i}.png" for i in range(len(sequences))], list(sequences), np.zeros((len(sequences), 5), dtype=np.uint8))


def authors_caption(label_list, sos=0, eos=6, pad=7):
    """The training caption of ``datasets/dataset.py`` for a 5-entry id list, restated: SOS first, EOS after
    the last step, PAD after the EOS."""
    ids = [v for v in label_list if v]
    caption = [sos, *ids, eos]
    return caption + [pad] * (7 - len(caption))


def test_tokens_follow_the_vocabulary_size():
    assert sequence_tokens(5) == {"sos": 0, "eos": 6, "pad": 7, "vocab": 8, "positions": 6}
    assert sequence_tokens(3) == {"sos": 0, "eos": 4, "pad": 5, "vocab": 6, "positions": 4}


def test_targets_real_short_and_full():
    task = SequenceTask(LABELS)
    targets = task.targets(table(["", "nose-eye-lip", "nose-eye-eyebrow-lip-hair", "hair"]))
    assert targets.dtype == np.int64
    np.testing.assert_array_equal(
        targets,
        [[0, 6, 7, 7, 7, 7, 7], [0, 1, 2, 4, 6, 7, 7], [0, 1, 2, 3, 4, 5, 6], [0, 5, 6, 7, 7, 7, 7]],
    )
    for row, ids in zip(targets, ([0] * 5, [1, 2, 4, 0, 0], [1, 2, 3, 4, 5], [5, 0, 0, 0, 0])):
        assert row.tolist() == authors_caption(ids)
    # The decoder reads the target without its last token, EOS hidden as PAD (train.py).
    np.testing.assert_array_equal(
        task.teacher_tokens(torch.as_tensor(targets, dtype=torch.float32)),
        [[0, 7, 7, 7, 7, 7], [0, 1, 2, 4, 7, 7], [0, 1, 2, 3, 4, 5], [0, 5, 7, 7, 7, 7]],
    )
    # Another vocabulary size: tokens move with C.
    small = SequenceTask(("a", "b", "c"))
    np.testing.assert_array_equal(small.targets(table(["c-a", ""])), [[0, 3, 1, 4, 5], [0, 4, 5, 5, 5]])


def test_targets_refuse_unknown_or_too_long_sequences():
    task = SequenceTask(("a", "b"))
    with pytest.raises(MlcdfError, match="not labels"):
        task.targets(table(["a-x"]))
    with pytest.raises(MlcdfError, match="at most 2"):
        task.targets(table(["a-b-a"]))


def test_loss_is_cross_entropy_over_non_pad_positions():
    task = SequenceTask(LABELS)
    targets = torch.as_tensor(task.targets(table(["nose-lip", ""])), dtype=torch.float32)
    logits = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(0))
    wanted = targets[:, 1:].long()
    keep = wanted != 7
    expected = -F.log_softmax(logits, dim=-1).gather(2, wanted.clamp_max(7)[..., None])[..., 0][keep].mean()
    loss = task.loss()(logits, targets)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert keep.sum() == 4  # nose, lip, EOS; EOS
    # Logits at PAD targets do not matter.
    changed = logits.clone()
    changed[~keep] = 100.0
    assert float(task.loss()(changed, targets)) == pytest.approx(float(loss), rel=1e-6)


def authors_decode(step_logits, eos, pad):
    """``evalute_transformer``'s loop restated for one image, given the logits of each greedy step."""
    caption = [0] + [pad] * len(step_logits)
    for i, logits in enumerate(step_logits):
        predicted = int(np.argmax(logits))
        if predicted == eos:
            caption = [0 if v == pad else v for v in caption[1:]]
            return caption
        caption[i + 1] = predicted
    return caption[1:]


def one_hot_steps(rows, vocab=8):
    return torch.nn.functional.one_hot(torch.tensor(rows), vocab).float()


def test_decode_by_hand_and_as_the_authors_on_random_logits():
    task = SequenceTask(LABELS)
    rows = [[1, 2, 6, 3, 4], [6, 1, 2, 3, 4], [7, 1, 6, 2, 2], [1, 7, 2, 3, 4], [0, 3, 6, 6, 6], [5, 4, 3, 2, 1]]
    expected = [[1, 2, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [1, 7, 2, 3, 4], [0, 3, 0, 0, 0], [5, 4, 3, 2, 1]]
    np.testing.assert_array_equal(task.decode(one_hot_steps(rows)), expected)
    for seed in range(5):
        logits = torch.randn(64, 5, 8, generator=torch.Generator().manual_seed(seed))
        ours = task.decode(logits).numpy()
        theirs = np.array([authors_decode(row, 6, 7) for row in logits.numpy()])
        np.testing.assert_array_equal(ours, theirs)


def test_scores_are_the_largest_label_probability_up_to_the_first_eos():
    task = SequenceTask(("a", "b"))  # SOS 0, a 1, b 2, EOS 3, PAD 4
    probabilities = torch.tensor(
        [
            [[0.0, 0.6, 0.1, 0.3, 0.0], [0.0, 0.1, 0.2, 0.7, 0.0]],  # a, then EOS: b counts at the EOS step
            [[0.0, 0.1, 0.1, 0.8, 0.0], [0.0, 0.9, 0.05, 0.05, 0.0]],  # EOS first: the later 0.9 is ignored
        ]
    )
    scores = task.scores(probabilities.clamp_min(1e-9).log())
    np.testing.assert_allclose(scores.numpy(), [[0.6, 0.2], [0.1, 0.1]], atol=1e-6)
    # Validation: mAP of the scores against the labels present in the token targets.
    targets = task.targets(table(["a", "", "b-a", "b"]))
    np.testing.assert_array_equal(task.multihot(targets), [[1, 0], [0, 0], [1, 1], [0, 1]])
    assert task.validation_score(targets, np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.7], [0.1, 0.8]])) == 1.0
    assert task.validation_score(targets, np.array([[0.1, 0.9], [0.9, 0.9], [0.8, 0.1], [0.9, 0.2]])) < 0.6


def test_create_task_follows_the_model_and_refuses_unordered_data():
    config = TrainConfig(prepared="p", model="seqfakeformer_r50", out="o")
    assert model_info("seqfakeformer_r50").task == "sequence" and model_info("resnet50").task == "multilabel"
    task = create_task(config, LABELS)
    assert isinstance(task, SequenceTask) and task.eos == 6
    assert isinstance(create_task(TrainConfig(prepared="p", model="resnet50", out="o"), LABELS), MultiLabelTask)
    with pytest.raises(MlcdfError) as error:
        create_task(config, LABELS, ordered=False)
    assert "\n" not in str(error.value) and "order" in str(error.value)


@pytest.mark.parametrize(("name", "expected"), [("seqfakeformer_r34", 24_596_586), ("seqfakeformer_r50", 27_213_162)])
def test_parameter_counts_equal_the_authors_model(name, expected):
    # The authors' count is over all parameters, the frozen stem and layer1 included.
    model = meta_model(name, 5)
    assert count_parameters(model) == expected
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1"}
    assert model.input_mean == (0.5, 0.5, 0.5) and model.input_std == (0.5, 0.5, 0.5)


def test_r50_is_dilated_to_stride_16_and_r34_keeps_stride_32():
    r34 = create_model("seqfakeformer_r34", 5)
    r50 = create_model("seqfakeformer_r50", 5)
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        assert r34.forward_features(x).shape[-2:] == (2, 2)
        assert r50.forward_features(x).shape[-2:] == (4, 4)


def test_sine_position_encoding_values():
    pos = sine_position_encoding(2, 3, 8)
    assert pos.shape == (8, 2, 3)
    # Row channels first: for row r (1-based, normalised to 2π·r/(H + 1e-6)) and k in 0..3,
    # frequency 10000^(2⌊k/2⌋/4); sin for even k, cos for odd k. Then the column channels.
    for r in range(2):
        for c in range(3):
            y, x = 2 * np.pi * (r + 1) / (2 + 1e-6), 2 * np.pi * (c + 1) / (3 + 1e-6)
            expected = [f(v / 10000 ** (2 * (k // 2) / 4)) for v in (y, x) for k, f in zip(range(4), (np.sin, np.cos) * 2)]
            np.testing.assert_allclose(pos[:, r, c].numpy(), expected, atol=1e-6)


def test_gaussian_cross_attention_adds_the_prior_to_the_logits():
    torch.manual_seed(0)
    attention = GaussianCrossAttention(8, 2, dropout=0.0).eval()
    reference = torch.nn.MultiheadAttention(8, 2).eval()
    reference.load_state_dict(attention.state_dict())
    query, key = torch.randn(3, 2, 8), torch.randn(5, 2, 8)
    zero = torch.zeros(2, 2, 3, 5)
    torch.testing.assert_close(attention(query, key, key, zero), reference(query, key, key)[0])
    # With a bias: softmax(q·k/√d + bias) by hand, head by head.
    bias = torch.randn(2, 2, 3, 5)
    w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attention.in_proj_bias.chunk(3)
    q = (query @ w_q.T + b_q).reshape(3, 2, 2, 4).permute(1, 2, 0, 3)
    k = (key @ w_k.T + b_k).reshape(5, 2, 2, 4).permute(1, 2, 0, 3)
    v = (key @ w_v.T + b_v).reshape(5, 2, 2, 4).permute(1, 2, 0, 3)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0 + bias, dim=-1)
    expected = attention.out_proj((weights @ v).permute(2, 0, 1, 3).reshape(3, 2, 8))
    torch.testing.assert_close(attention(query, key, key, bias), expected)


def tiny_model(num_labels=5, seed=0):
    torch.manual_seed(seed)
    model = create_model("seqfakeformer_r34", num_labels, backbone="test_resnet").eval()
    # Random transformer weights make greedy paths that end at every step, with PAD and SOS emitted too.
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.mul_(30)
    return model


def authors_greedy(model: SeqFakeFormer, image: torch.Tensor) -> list[int]:
    """``evalute_transformer`` restated for one image: a full-length caption of PAD behind SOS, PAD keys
    hidden until filled, one more position filled per step; stop at EOS."""
    positions = model.positions
    caption = torch.full((1, positions), model.pad)
    caption[0, 0] = model.sos
    hidden = torch.ones(1, positions, dtype=torch.bool)
    hidden[0, 0] = False
    encoded = model.encode(model.forward_features(image), max(image.shape[-2:]))
    for i in range(positions - 1):
        padding = torch.zeros(1, positions).masked_fill(hidden, float("-inf"))
        predicted = int(model.decode(caption, encoded, padding=padding)[0, i].argmax())
        if predicted == model.eos:
            return [0 if v == model.pad else v for v in caption[0, 1:].tolist()]
        caption[0, i + 1] = predicted
        hidden[0, i + 1] = False
    return caption[0, 1:].tolist()


@torch.no_grad()
def test_batched_greedy_decoding_equals_one_at_a_time_and_the_authors_loop():
    model = tiny_model()
    task = SequenceTask(LABELS)
    images = torch.randn(12, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    batched = task.decode(model(images))
    single = torch.cat([task.decode(model(images[i : i + 1])) for i in range(len(images))])
    torch.testing.assert_close(batched, single)
    theirs = torch.tensor([authors_greedy(model, images[i : i + 1]) for i in range(len(images))])
    torch.testing.assert_close(batched, theirs)
    lengths = (batched > 0).sum(dim=1)
    assert len(set(lengths.tolist())) > 1  # the paths end at different steps
    assert model(images).shape == (12, 5, 8)


@torch.no_grad()
def test_teacher_forced_outputs_depend_only_on_earlier_tokens():
    model = tiny_model(num_labels=3)
    images = torch.randn(2, 3, 64, 64)
    tokens = torch.tensor([[0, 1, 2, 3], [0, 3, 5, 5]])
    logits = model(images, tokens)
    assert logits.shape == (2, 4, 6)
    changed = tokens.clone()
    changed[:, 3] = 2
    torch.testing.assert_close(model(images, changed)[:, :3], logits[:, :3])
    # PAD keys are hidden from the self-attention (train.py's tgt_key_padding_mask): only the outputs at
    # PAD positions feel it, which the loss ignores, but they are the authors' outputs.
    encoded = model.encode(model.forward_features(images), 64)
    hidden = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, float("-inf"), float("-inf")]])
    torch.testing.assert_close(logits, model.decode(tokens, encoded, padding=hidden))
    assert not torch.allclose(logits[1, 3], model.decode(tokens, encoded)[1, 3])
    # The greedy step logits are the teacher-forced logits of the greedy path.
    steps = model(images[:1])
    path = torch.cat([torch.zeros(1, 1, dtype=torch.long), steps.argmax(-1)], dim=1)
    torch.testing.assert_close(model(images[:1], path[:, :3]), steps, atol=1e-5, rtol=1e-5)


def test_any_timm_backbone_and_reference_points_scale_with_the_map():
    model = create_model("seqfakeformer_r50", 4, backbone="test_resnet")
    assert model.num_labels == 4 and model.head.layers[-1].out_features == 7
    assert model.encode(torch.zeros(1, model.num_features, 2, 2), 64)["cells"] == 2.0
    # The authors' scale: image side / floor(image side / map side).
    assert model.encode(torch.zeros(1, model.num_features, 3, 3), 64)["cells"] == 64 / 21


def test_gaussian_prior_by_hand():
    model = create_model("seqfakeformer_r34", 5, backbone="test_resnet")
    first, second = model.decoder[0], model.decoder[1]
    with torch.no_grad():
        first.reference.layers[-1].weight.zero_()
        first.reference.layers[-1].bias.copy_(torch.tensor([0.0, 2.0]))  # sigmoid -> (0.5, 0.881)
        for layer in (first, second):
            layer.offset.weight.zero_()
            layer.offset.bias.copy_(torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0]))  # head 1 moves by (1, -1)
            layer.scale.weight.zero_()
            layer.scale.bias.copy_(torch.tensor([1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0]))  # head 1: x scale 2² = 4
    grid = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # a 2 x 2 map, (x, y)
    point_input = torch.randn(3, 2, 256)
    bias, reference = first.prior(point_input, grid, 2.0, None)
    assert bias.shape == (2, 4, 3, 4)
    rx, ry = 2.0 * 0.5, 2.0 * torch.sigmoid(torch.tensor(2.0)).item()
    for h, (px, py, sx) in enumerate([(rx, ry, 1.0), (rx + 1, ry - 1, 4.0), (rx, ry, 1.0), (rx, ry, 1.0)]):
        expected = torch.tensor([-(sx * (px - gx) ** 2 + (py - gy) ** 2) / 4 for gx, gy in grid.tolist()])
        torch.testing.assert_close(bias[1, h, 2], expected)
    # The second layer reuses the first's reference point.
    bias2, reference2 = second.prior(point_input, grid, 2.0, reference)
    assert reference2 is reference
    torch.testing.assert_close(bias2, bias)


@torch.no_grad()
def test_reset_classifier_moves_the_vocabulary():
    model = create_model("seqfakeformer_r34", 5, backbone="test_resnet").eval()
    model.reset_classifier(3)
    assert (model.eos, model.pad, model.positions) == (4, 5, 4)
    assert model.token_embedding.num_embeddings == 6 and model.position_embedding.num_embeddings == 4
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3, 6)
