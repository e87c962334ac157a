"""Noise schedules of the discrete-time variance-preserving (DDPM) process.

Every array is indexed by the step i in 0..T of the schedule, with index 0 the
clean data (beta_0 = 0, alpha_bar_0 = 1), so `x_t = sqrt(ab[t]) x_0 +
sqrt(1 - ab[t]) eps` reads the same in code and in the paper. A respaced
schedule keeps this convention with its own K steps, and `timesteps` maps each
of its steps back to the original time the model was trained on.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_bias import checks


@flax.struct.dataclass
class Schedule:
    """A noise schedule; a pytree, so it can be passed into jitted functions.

    Attributes:
        betas: beta_i, with betas[0] = 0.  # [T+1] float32
        alphas: 1 - beta_i.  # [T+1] float32
        alpha_bars: prod_{j<=i} alpha_j, with alpha_bars[0] = 1.  # [T+1] float32
        timesteps: time value the model is conditioned on at step i; `arange(T+1)`
            for an un-respaced schedule.  # [T+1] int32
    """

    betas: jax.Array
    alphas: jax.Array
    alpha_bars: jax.Array
    timesteps: jax.Array

    @property
    def num_steps(self) -> int:
        """T, the number of noising steps (static: read from the array shape)."""
        return self.betas.shape[0] - 1

    @property
    def one_minus_alpha_bars(self) -> jax.Array:
        """1 - alpha_bar_i, accurate to float32 precision even at small i.

        `1 - alpha_bars` in float32 loses about 3 significant digits at t=1
        (1 - ab = 1e-4..2e-4), which shows up in the posterior coefficients and in
        the token fields sqrt(ab)/(1-ab); the log-space form does not.

        Returns:
            The array 1 - alpha_bars.  # [T+1]
        """
        return -jnp.expm1(jnp.cumsum(jnp.log1p(-self.betas)))


def _check_num_steps(num_steps, name: str = "num_steps", maximum=None) -> int:
    if not checks.is_int(num_steps):
        raise ValueError(f"{name} must be an integer, got {num_steps!r}.")
    if num_steps < 1:
        raise ValueError(f"{name} must be >= 1, got {num_steps}.")
    if maximum is not None and num_steps > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {num_steps}.")
    return int(num_steps)


def _from_betas(betas: np.ndarray, timesteps: np.ndarray) -> Schedule:
    """Builds a schedule from float64 betas of steps 1..T.

    Args:
        betas: beta_1..beta_T in float64.  # [T]
        timesteps: model time of steps 0..T.  # [T+1]

    Returns:
        The schedule, products taken in float64 before the cast to float32.
    """
    betas = np.concatenate([[0.0], np.asarray(betas, np.float64)])
    alphas = 1.0 - betas
    return Schedule(
        betas=jnp.asarray(betas, jnp.float32),
        alphas=jnp.asarray(alphas, jnp.float32),
        alpha_bars=jnp.asarray(np.cumprod(alphas), jnp.float32),
        timesteps=jnp.asarray(timesteps, jnp.int32),
    )


def linear_schedule(num_steps: int, beta_start: float, beta_end: float) -> Schedule:
    """Betas linear in t from `beta_start` (t=1) to `beta_end` (t=T).

    Args:
        num_steps: T, a positive integer.
        beta_start: beta_1, with 0 < beta_start <= beta_end.
        beta_end: beta_T, below 1.

    Returns:
        The schedule.

    Raises:
        ValueError: if an argument is out of range.
    """
    num_steps = _check_num_steps(num_steps)
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not checks.is_number(value):
            raise ValueError(f"{name} must be a real number, got {value!r}.")
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must lie in (0, 1), got {value}.")
    if beta_start > beta_end:
        raise ValueError(
            f"beta_start must be <= beta_end, got beta_start={beta_start} > beta_end={beta_end}."
        )
    betas = np.linspace(float(beta_start), float(beta_end), num_steps, dtype=np.float64)
    return _from_betas(betas, np.arange(num_steps + 1))


def token_schedule(num_steps: int = 500) -> Schedule:
    """The controlled-setting schedule: betas 1e-4*1000/T .. 0.02*1000/T.

    The rescaling by 1000/T keeps alpha_bar_T close to the T=1000 DDPM value for
    any T; the paper uses T=500 (betas 2e-4..0.04).

    Args:
        num_steps: T; must exceed 20 so that beta_T = 20/T < 1.

    Returns:
        The schedule.

    Raises:
        ValueError: if `num_steps` is not an integer above 20.
    """
    num_steps = _check_num_steps(num_steps)
    if num_steps <= 20:
        raise ValueError(
            f"num_steps must be > 20 so that beta_end = 20/num_steps < 1, got {num_steps}."
        )
    scale = 1000.0 / num_steps
    return linear_schedule(num_steps, 1e-4 * scale, 0.02 * scale)


def image_schedule(num_steps: int = 1000) -> Schedule:
    """The DDPM image schedule (Ho et al. 2020): betas linear 1e-4..0.02.

    Args:
        num_steps: T (paper: 1000).

    Returns:
        The schedule.
    """
    return linear_schedule(num_steps, 1e-4, 0.02)


def respace(schedule: Schedule, num_steps: int) -> Schedule:
    """Keeps an evenly spaced subset of steps (improved DDPM, Nichol & Dhariwal 2021).

    The kept steps S = {s_1 < ... < s_K = T} keep their alpha_bar exactly; the new
    betas 1 - ab[s_k]/ab[s_{k-1}] (s_0 = 0) make the K-step chain a valid DDPM
    chain over the same marginals. Respacing a respaced schedule composes: the
    model times are looked up through `schedule.timesteps`.

    Args:
        schedule: the schedule to thin out (host-side: not under jit).
        num_steps: K, an integer in 1..T. Points of `linspace(0, T, K+1)` lie at
            least 1 apart, so rounding never merges two of them: exactly K steps.

    Returns:
        The respaced schedule.

    Raises:
        ValueError: if `num_steps` is not an integer in 1..T.
    """
    total = schedule.num_steps
    num_steps = _check_num_steps(num_steps, maximum=total)
    kept = np.unique(np.round(np.linspace(0, total, num_steps + 1)).astype(np.int64))
    kept = kept[kept > 0]  # [K], ends with T
    # Recomputing alpha_bar in float64 from the betas keeps the ratios accurate;
    # the stored float32 alpha_bars would lose digits at small t.
    betas = np.asarray(schedule.betas, np.float64)
    alpha_bars = np.cumprod(1.0 - betas)
    previous = np.concatenate([[1.0], alpha_bars[kept[:-1]]])
    new_betas = 1.0 - alpha_bars[kept] / previous
    timesteps = np.asarray(schedule.timesteps)[np.concatenate([[0], kept])]
    return _from_betas(new_betas, timesteps)
