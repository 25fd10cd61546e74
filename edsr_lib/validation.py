"""Validation during training: PSNR/SSIM (and LPIPS with `val_lpips`) per scale, each rank scoring its share of the
images and every rank then holding every image's numbers exactly; TensorBoard scalars and [bicubic | SR | HR]
crops of the first images."""

import numpy as np

from .evaluation import bicubic_upscale, evaluate
from .figures import centre_crops
from .metrics import protocol_for
from .ranks import sum_over_ranks


class Validator:
    """Scores a model on `val_sets` ({scale: dataset}) under `data_test`'s protocol. The bicubic baseline is
    scored once; `psnr` (the mean over scales), `scale_psnr`, `scale_bicubic`, `scale_lpips` and `per_image` hold
    the last validation's numbers."""

    def __init__(self, val_sets, data_test, rank=0, world=1, lpips=None):
        self.val_sets, self.rank, self.world, self.lpips = val_sets, rank, world, lpips or {}
        self.protocols = {s: protocol_for(data_test, s) for s in val_sets}
        self.bicubic_psnr, self.scale_bicubic = None, {}
        self.scale_psnr, self.scale_lpips, self.per_image = {}, {}, {}

    def __bool__(self):
        return bool(self.val_sets)

    def run(self, model, tb=None, step=0):
        """The mean validation PSNR over the scales of `model` (a network with `at_scale`), or None without
        validation images; `tb`: a TensorBoardLog to write the scores and crops at `step`."""
        if not self.val_sets:
            return None
        if self.bicubic_psnr is None:
            self.scale_bicubic = {s: self._score(d, None, s)["psnr"] for s, d in self.val_sets.items()}
            self.bicubic_psnr = float(np.mean(list(self.scale_bicubic.values())))
        keep = 2 if tb is not None and tb.enabled else 0
        results = {s: self._score(d, model.at_scale(s), s, keep) for s, d in self.val_sets.items()}
        self.scale_psnr = {s: r["psnr"] for s, r in results.items()}
        self.scale_lpips = {s: r["lpips"] for s, r in results.items() if "lpips" in r}
        self.per_image = {s: r["per_image"] for s, r in results.items()}
        if tb is not None and tb.enabled:
            self._log(results, tb, step)
        return float(np.mean(list(self.scale_psnr.values())))

    def _score(self, dataset, model, scale, keep=0):
        """evaluate() on this rank's share of `dataset`, then every image's numbers on every rank. The model's
        outputs get LPIPS too when it is on."""
        lpips = self.lpips if model is not None else {}
        metrics = ("psnr", "ssim", *lpips)
        share = range(self.rank, len(dataset), self.world)
        result = evaluate(
            dataset,
            model,
            self.protocols[scale],
            progress=False,
            keep_images=keep,
            indices=share,
            metrics=metrics,
            lpips=lpips,
        )
        if self.world == 1:
            return result
        scores = np.zeros((len(dataset), len(metrics)), np.float64)
        for i, row in zip(share, result["per_image"], strict=True):
            scores[i] = [row[m] for m in metrics]
        scores = sum_over_ranks(scores)
        result["per_image"] = [
            {"name": name, **{m: float(v) for m, v in zip(metrics, values, strict=True)}}
            for name, values in zip(dataset.names, scores, strict=True)
        ]
        result.update({m: float(np.mean(scores[:, j])) for j, m in enumerate(metrics)})
        return result

    def _log(self, results, tb, step):
        for s, result in results.items():
            tag = f"val/{self.val_sets[s].name}/x{s}"
            scores = {"psnr": result["psnr"], "ssim": result["ssim"], "psnr_bicubic": self.scale_bicubic.get(s)}
            scores.update({m: result[m] for m in self.lpips})
            tb.scalars(step, {f"{tag}/{name}": value for name, value in scores.items()})
            for name, lr, sr, hr in result.get("images", []):
                tb.image(f"{tag}/{name} (bicubic, SR, HR)", centre_crops([bicubic_upscale(lr, s), sr, hr]), step)
