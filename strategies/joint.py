"""Joint training: at each experience, train on the union of all data seen so far (the upper bound)."""
from dataclasses import dataclass

import torch

from cl.core.strategy import Strategy, StrategyConfig, register


@dataclass
class JointConfig(StrategyConfig):
    reset: bool = False  # re-initialise the model before each experience (train from scratch on the union)


@register("joint", JointConfig)
class Joint(Strategy):
    """Trains on the union of all data seen so far (upper bound)."""

    state_attrs = ("seen_x", "seen_y")  # the data seen so far (checkpointed)

    def setup(self):
        self.seen_x, self.seen_y = [], []
        self._init = {k: v.clone() for k, v in self.model.state_dict().items()} if self.cfg.reset else None

    def train_data(self, exp):
        self.seen_x.append(exp.train_x)
        self.seen_y.append(exp.train_y)
        if self._init is not None:
            seen = self.model.head.seen.clone()
            self.model.load_state_dict(self._init)
            self.model.head.seen.copy_(seen)
            self.optimizer = self.make_optimizer()
        return torch.cat(self.seen_x), torch.cat(self.seen_y)
