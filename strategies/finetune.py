"""Fine-tuning: learn each experience with cross-entropy and nothing else (the lower bound)."""
from cl.core.strategy import Strategy, StrategyConfig, register


@register("finetune", StrategyConfig)
class Finetune(Strategy):
    """Naive fine-tuning on each experience (lower bound); reports prediction collapse (``prediction_collapsed``)."""
