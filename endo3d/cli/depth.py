"""``endo3d depth train | finetune | eval | predict``: thin runners that print where the results are."""

from __future__ import annotations

from endo3d.depth.config import DepthEvalConfig, DepthFinetuneConfig, DepthPredictConfig, DepthTrainConfig


def _train(config: DepthTrainConfig | DepthFinetuneConfig) -> None:
    from endo3d.depth.train import train

    result = train(config)
    assert result is not None
    info = result.info
    print(f"wrote {result.run}: {info['mode']} training, {info['steps']} steps in {info['train_seconds']:.0f} s "
          f"on {info['device']}; loss {info['loss_first_10']:.4f} -> {info['loss_last_10']:.4f} (first/last 10 steps)")
    print(f"trainable: {info['trainable_parameters']:,} of {info['total_parameters']:,} depth-network parameters "
          f"({100 * info['trainable_share']:.2f} %)" + (f", pose net {info['pose_parameters']:,}" if info["pose"] else ""))


def run_train(config: DepthTrainConfig) -> None:
    _train(config)


def run_finetune(config: DepthFinetuneConfig) -> None:
    _train(config)


def run_eval(config: DepthEvalConfig) -> None:
    from endo3d.depth.evaluate import evaluate, format_table

    result, path = evaluate(config)
    print(format_table(result))
    print(f"wrote {path}")


def run_predict(config: DepthPredictConfig) -> None:
    from endo3d.depth.predict import predict

    record = predict(config)
    print(f"wrote {config.out}: {record['frames']} frames of {record['values']} ({record['units']})")
