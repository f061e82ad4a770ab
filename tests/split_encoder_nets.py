"""Small SAC networks on a SEER split encoder, shared by the freeze tests."""

from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Bounded
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal

from torchrl_seer.modules import LatentOrPixelFeatures, SplitEncoder


def sac_actor_and_critic(encoder: SplitEncoder, *, num_actions: int = 2):
    """A tanh-normal actor and a Q-network, both reading features of ``encoder``."""
    features = encoder.out_features
    action_spec = Bounded(-1.0, 1.0, shape=(num_actions,))
    actor_net = TensorDictSequential(
        LatentOrPixelFeatures(encoder),
        TensorDictModule(
            nn.Sequential(
                MLP(in_features=features, out_features=2 * num_actions, num_cells=[32]),
                NormalParamExtractor(),
            ),
            in_keys=["features"],
            out_keys=["loc", "scale"],
        ),
    )
    actor = ProbabilisticActor(
        actor_net, in_keys=["loc", "scale"], distribution_class=TanhNormal, spec=action_spec
    )
    qvalue = TensorDictSequential(
        LatentOrPixelFeatures(encoder),
        TensorDictModule(
            MLP(in_features=features + num_actions, out_features=1, num_cells=[32]),
            in_keys=["features", "action"],
            out_keys=["state_action_value"],
        ),
    )
    return actor, qvalue, action_spec
