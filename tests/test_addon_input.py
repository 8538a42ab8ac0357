"""What the add-on reads (``addon_input``): the encoder tap f_s (local) or the fused F_s (the paper)."""

from __future__ import annotations

import pytest
import torch

from scripts.cli import load_weights
from scripts.networks import BackboneCNN, UMProtoShare

TINY = {"encoder_layers": (1, 1), "encoder_width": 8, "embed_dim": 16, "mapping_dim": 12}


def tiny(addon_input: str, **kwargs) -> UMProtoShare:
    torch.manual_seed(0)
    return UMProtoShare(**TINY, addon_input=addon_input, **kwargs).eval()


@pytest.mark.parametrize("addon_input", ["encoder", "fused"])
def test_embeddings_are_the_add_on_of_the_chosen_features(addon_input):
    model = tiny(addon_input)
    x = torch.randn(1, 4, 32, 32, 24)
    taps, _ = model.backbone.encode_decode(x)
    explanation = model.explain(x)
    for entry in explanation.per_scale:
        source = taps[entry.scale - 1] if addon_input == "encoder" else entry.features
        torch.testing.assert_close(entry.embeddings, model.head(entry.scale).addon(source))
        # the maps always come from F_s
        torch.testing.assert_close(entry.raw_maps, model.head(entry.scale).mapping(entry.features))
    assert not torch.equal(taps[0], explanation.per_scale[0].features)  # the two readings differ here
    torch.testing.assert_close(model(x), explanation.logits)


def test_encoder_embeddings_do_not_see_a_far_away_change_and_fused_ones_do():
    """f_1's receptive field is the stem's 7 voxels; the decoder's F_1 reaches much further."""
    x = torch.randn(1, 4, 64, 64, 64)
    far = x.clone()
    far[..., :8, :8, :8] += 5.0  # a change in one corner
    changed = {}
    for addon_input in ("encoder", "fused"):
        model = tiny(addon_input)
        before, after = (model.explain(v).per_scale[0].embeddings for v in (x, far))
        # scale-1 grid voxels 12..31 see input voxels from 21 on: the stem cannot reach the corner
        changed[addon_input] = (after - before)[..., 12:, 12:, 12:].abs().max().item()
    assert changed["encoder"] == 0.0
    assert changed["fused"] > 1e-5


def test_a_checkpoint_loads_only_into_a_network_with_its_addon_input(tmp_path):
    fused, encoder = tiny("fused"), tiny("encoder")
    encoder.load_state_dict(tiny("encoder").state_dict())
    with pytest.raises(RuntimeError, match="trained with addon_input='fused'.*--addon_input fused"):
        encoder.load_state_dict(fused.state_dict())
    with pytest.raises(RuntimeError, match="trained with addon_input='encoder'"):
        tiny("fused").load_state_dict(encoder.state_dict())
    # one written before the setting existed has no entry and was trained with the fused features
    older = {k: v for k, v in fused.state_dict().items() if k != "addon_reads_encoder"}
    tiny("fused").load_state_dict(older)
    with pytest.raises(RuntimeError, match="addon_input='fused'"):
        tiny("encoder").load_state_dict(older)
    assert int(encoder.addon_reads_encoder) == 1  # a refused load leaves the setting as built
    # the command-line loader turns it into exit 2 with the reason in errors.json
    torch.save(fused.state_dict(), tmp_path / "fused.pt")
    with pytest.raises(SystemExit) as exit_info:
        load_weights(encoder, tmp_path / "fused.pt", "ckpt_path", errors_dir=tmp_path)
    assert exit_info.value.code == 2
    assert "--addon_input fused" in (tmp_path / "errors.json").read_text()


def test_the_warm_up_cnn_still_initialises_an_encoder_reading_model():
    torch.manual_seed(1)
    cnn = BackboneCNN(num_classes=2, scales=(1, 2, 3), embed_dim=16, encoder_layers=(1, 1), encoder_width=8)
    model = tiny("encoder")
    unused = model.load_backbone(cnn.state_dict())
    assert "addon_reads_encoder" not in unused and int(model.addon_reads_encoder) == 1
    torch.testing.assert_close(model.head(3).addon[0].weight, cnn.state_dict()["heads.scale3.addon.0.weight"])


def test_without_a_decoder_the_two_readings_are_one_and_load_either_way():
    """fusion='none' (every ProtoPNet-family baseline): F_s is f_s, so a checkpoint of either reading fits."""
    x = torch.randn(1, 4, 32, 32, 24)
    fused, encoder = tiny("fused", fusion="none"), tiny("encoder", fusion="none")
    torch.testing.assert_close(fused(x), encoder(x))
    encoder.load_state_dict(fused.state_dict())
    fused.load_state_dict({k: v for k, v in encoder.state_dict().items() if k != "addon_reads_encoder"})
    assert int(encoder.addon_reads_encoder) == 1 and int(fused.addon_reads_encoder) == 0
