"""Saving a `SeedGenerator`'s state with a layer's or model's own variables."""

from keras import ops

_SEED_STATE_KEY = "seed_generator_state"


class SeedStateSavingMixin:
    """Writes `self.seed_generator.state` into `.keras` files and reads it back.

    Keras does not save `SeedGenerator` state, so a run resumed from a file
    would redraw the noise of its first steps. Mixed into `Sampling` and the
    latent-variable models, before the Keras base class. Files saved without
    the state still load (the generator then keeps its current state).
    """

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store[_SEED_STATE_KEY] = self.seed_generator.state

    def load_own_variables(self, store):
        keys = list(store.keys())
        if _SEED_STATE_KEY in keys:
            state = self.seed_generator.state
            state.assign(ops.cast(store[_SEED_STATE_KEY], state.dtype))
            store = {key: store[key] for key in keys if key != _SEED_STATE_KEY}
        super().load_own_variables(store)
