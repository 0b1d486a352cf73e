"""The demo's prompt-adherence score: right on drawn shapes, near chance on noise."""
import random

import numpy as np
from PIL import Image

from diffusion.demo.adherence import score_grid
from diffusion.demo.shapes import caption, draw


def grid_of(cells, rows):
    cols = len(cells) // rows
    grid = Image.new("RGB", (cols * 32, rows * 32))
    for i, c in enumerate(cells):
        grid.paste(c, ((i % cols) * 32, (i // cols) * 32))
    return grid


def test_drawn_shapes_score_one_and_noise_scores_low(tmp_path):
    specs = [("red", "circle", "blue"), ("yellow", "square", "black"), ("white", "triangle", "green")]
    rng = random.Random(0)
    drawn = [draw(fg, s, bg, 32, rng) for fg, s, bg in specs for _ in range(2)]
    grid_of(drawn, rows=3).save(tmp_path / "good.png")
    prompts = [caption(*s) for s in specs]
    good = score_grid(str(tmp_path / "good.png"), prompts)
    assert good["accuracy"] == good["both_accuracy"] == 1.0

    noise = [Image.fromarray(np.random.RandomState(i).randint(0, 255, (32, 32, 3), dtype=np.uint8)) for i in range(6)]
    grid_of(noise, rows=3).save(tmp_path / "noise.png")
    assert score_grid(str(tmp_path / "noise.png"), prompts)["accuracy"] < 0.5

    swapped = [draw(bg, s, fg, 32, rng) for fg, s, bg in specs for _ in range(2)]  # colours exchanged
    grid_of(swapped, rows=3).save(tmp_path / "swapped.png")
    assert score_grid(str(tmp_path / "swapped.png"), prompts)["accuracy"] == 0.0


def test_both_counts_only_cells_with_shape_and_background_right(tmp_path):
    specs = [("red", "circle", "blue"), ("yellow", "square", "black")]
    rng = random.Random(1)
    # row 1 right; row 2 keeps the shape colour but draws it on a white background
    cells = [draw("red", "circle", "blue", 32, rng), draw("red", "circle", "blue", 32, rng),
             draw("yellow", "square", "white", 32, rng), draw("yellow", "square", "white", 32, rng)]
    grid_of(cells, rows=2).save(tmp_path / "half.png")
    scores = score_grid(str(tmp_path / "half.png"), [caption(*s) for s in specs])
    assert scores["foreground_accuracy"] == 1.0 and scores["background_accuracy"] == 0.5
    assert scores["both_accuracy"] == 0.5 and scores["accuracy"] == 0.75
