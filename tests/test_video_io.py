"""Videos people can watch (dgpo.video_io): MP4 through imageio-ffmpeg, animated GIF / WebP, grids,
before/after pairs, and `dgpo sample` on a video model."""

import pytest
import torch

from dgpo.errors import InputError, MissingPathError
from dgpo.video_io import compare_video, read_video, video_grid, write_gif, write_mp4, write_video, write_webp


def clip(frames=10, h=40, w=56, step=3):
    """A smooth gradient background with a yellow square moving right ``step`` pixels a frame."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    v = torch.empty(frames, 3, h, w)
    for k in range(frames):
        v[k, 0], v[k, 1], v[k, 2] = yy, xx, 0.3
        v[k, :, 10:22, 2 + step * k : 14 + step * k] = torch.tensor([0.95, 0.9, 0.1]).view(3, 1, 1)
    return v


def test_mp4_reads_back_with_its_frames_size_and_pixels(tmp_path):
    v = clip()
    path = write_mp4(v, tmp_path / "sub" / "a.mp4", fps=8)  # the folder is created
    assert path.is_file() and path.read_bytes()[4:8] == b"ftyp"
    back = read_video(path)
    assert back.shape == v.shape
    assert (back - v).abs().mean() < 0.05  # H.264 is lossy; CRF 18 keeps it close
    write_mp4(v, path, fps=16)  # overwrites
    assert read_video(path).shape == v.shape


def test_odd_sizes_are_padded_to_even_for_yuv420p(tmp_path):
    v = clip(frames=5, h=33, w=47)
    back = read_video(write_mp4(v, tmp_path / "odd.mp4"))
    assert back.shape == (5, 3, 34, 48)  # one row and one column repeated
    assert (back[:, :, :33, :47] - v).abs().mean() < 0.05
    assert (back[:, :, 33] - back[:, :, 32]).abs().mean() < 0.05  # the padding repeats the edge
    tiny = torch.rand(3, 3, 1, 1)  # a 1x1 video still writes
    assert read_video(write_mp4(tiny, tmp_path / "tiny.mp4")).shape == (3, 3, 2, 2)


def test_gif_and_webp_are_animated_with_every_frame(tmp_path):
    v = clip(frames=7)
    gif, webp = write_gif(v, tmp_path / "a.gif", fps=10), write_webp(v, tmp_path / "a.webp", fps=10)
    for path in (gif, webp):
        back = read_video(path)
        assert back.shape == v.shape and (back - v).abs().mean() < 0.05, path
    from PIL import Image

    with Image.open(gif) as img:
        assert img.n_frames == 7 and img.info["duration"] == 100 and img.info["loop"] == 0
    with Image.open(webp) as img:
        assert img.n_frames == 7 and img.is_animated
    assert read_video(write_video(v, tmp_path / "b.webp")).shape == v.shape
    u8 = (v * 255).round().to(torch.uint8)  # uint8 frames are taken as they are
    assert torch.equal(read_video(write_gif(u8, tmp_path / "u8.gif")), read_video(gif))


def test_bad_paths_and_inputs_are_clear_errors(tmp_path):
    v = clip(frames=3)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="cannot create the folder"):
        write_mp4(v, tmp_path / "file.txt" / "a.mp4")  # a file where the folder should be
    with pytest.raises(InputError, match="cannot create the folder"):
        write_gif(v, tmp_path / "file.txt" / "a.gif")
    (tmp_path / "d.mp4").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        write_mp4(v, tmp_path / "d.mp4")
    with pytest.raises(InputError, match=r"must end in \.mp4"):
        write_mp4(v, tmp_path / "a.avi")
    with pytest.raises(InputError, match=r"must end in \.mp4, \.gif, \.webp"):
        write_video(v, tmp_path / "a.png")
    with pytest.raises(InputError, match=r"expected frames \[F, 3, H, W\]"):
        write_gif(v[None], tmp_path / "a.gif")
    with pytest.raises(InputError, match="fps=0"):
        write_webp(v, tmp_path / "a.webp", fps=0)
    with pytest.raises(MissingPathError, match="no file"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(InputError, match="cannot read|no frames"):
        read_video(tmp_path / "junk.mp4")


def test_video_grid_and_compare_tile_every_frame_with_captions(tmp_path):
    videos = torch.stack([clip(frames=4, h=16, w=16, step=1), clip(frames=4, h=16, w=16, step=2),
                          clip(frames=4, h=16, w=16, step=3)])
    grid = video_grid(videos, ["a yellow square moving right across a long caption", "b", "c"], cols=2, scale=2)
    assert grid.shape[0] == 4 and grid.shape[1] == 3 and grid.shape[3] == 2 * 32
    assert grid.shape[2] > 2 * 32  # two rows of 32 px tiles plus their captions
    assert torch.allclose(grid[2, :, :32, :32], videos[0, 2].repeat_interleave(2, 1).repeat_interleave(2, 2),
                          atol=1 / 255)  # the first tile is video 0, upscaled, frame by frame
    assert not torch.equal(grid[0], grid[3])  # it moves
    pairs = compare_video(videos[:2], videos[:2].flip(-1), ["x", "y"], cols=2, scale=2)
    assert pairs.shape[0] == 4 and pairs.shape[3] == 2 * (2 * 32 + 2)
    assert read_video(write_mp4(pairs, tmp_path / "pairs.mp4")).shape[0] == 4
    with pytest.raises(InputError, match="2 captions for 3 videos"):
        video_grid(videos, ["a", "b"])
    with pytest.raises(InputError, match="differ"):
        compare_video(videos[:2], videos[:1], ["x", "y"])
    with pytest.raises(InputError, match=r"expected videos \[B, F, 3, H, W\]"):
        video_grid(videos[0], ["a"] * 4)


class MovingSquareModel:
    """A stand-in video FlowModel for the CLI path: zero velocity, and a decode whose videos show a square
    moving right (its colour from the latent's mean, so that seeds differ)."""

    modality = "video"
    device = torch.device("cpu")

    def encode_prompts(self, prompts):
        return {"emb": torch.zeros(len(prompts), 2)}

    def velocity(self, x_t, t, cond):
        return torch.zeros_like(x_t)

    def latent_shape(self):
        return (2, 3, 4, 4)  # (C, F', H, W)

    def default_shift(self):
        return 1.0

    def rollout_grid(self, method, steps, shift):
        from dgpo.schedules import rollout_grid

        return rollout_grid(method, steps, shift)

    def decode(self, latents):
        b, frames, size = len(latents), 6, 24
        v = torch.full((b, frames, 3, size, size), 0.15)
        for i in range(b):
            colour = torch.sigmoid(latents[i].mean() + torch.tensor([1.0, 0.0, -1.0])).view(3, 1, 1)
            for k in range(frames):
                v[i, k, :, 6:14, 2 + 2 * k : 10 + 2 * k] = colour
        return v

    def to(self, device):
        return self


def test_dgpo_sample_on_a_video_model_writes_mp4s_gifs_and_an_animated_grid(tmp_path, monkeypatch, capsys):
    import dgpo.cli_generate
    from dgpo.cli import main

    monkeypatch.setattr(dgpo.cli_generate, "_load_flow_model", lambda a: MovingSquareModel())
    out = tmp_path / "samples.png"
    assert main(["sample", 'a sign that says "dgpo"', "a red square", "--n", "2", "--steps", "2", "--out", str(out),
                 "--fps", "12"]) == 0
    written = capsys.readouterr().out
    assert "4 videos of 6 frames" in written and "samples.mp4" in written
    files = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert files == ["000_0_a_sign_that_says_dgpo.gif", "000_0_a_sign_that_says_dgpo.mp4",
                     "000_1_a_sign_that_says_dgpo.gif", "000_1_a_sign_that_says_dgpo.mp4",
                     "001_0_a_red_square.gif", "001_0_a_red_square.mp4", "001_1_a_red_square.gif",
                     "001_1_a_red_square.mp4"]
    one = read_video(tmp_path / "samples" / "001_1_a_red_square.mp4")
    assert one.shape == (6, 3, 24, 24)
    grid = read_video(tmp_path / "samples.mp4")
    assert grid.shape[0] == 6 and grid.shape[3] == 4 * 24 * 4  # cols = max(n, 4) tiles of 24 px, upscaled 4x
    assert read_video(tmp_path / "samples.gif").shape[0] == 6
    from PIL import Image

    with Image.open(out) as still:  # a still of the grid's middle frame at --out
        assert still.size == (grid.shape[3], grid.shape[2])
    webp = tmp_path / "w" / "grid.webp"
    webp.parent.mkdir()
    assert main(["sample", "x", "--n", "1", "--steps", "1", "--out", str(webp)]) == 0
    with Image.open(webp) as img:
        assert img.is_animated and img.n_frames == 6
