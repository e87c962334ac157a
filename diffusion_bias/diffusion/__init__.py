"""The discrete-time diffusion process: schedules, posteriors, samplers, denoisers."""

from diffusion_bias.diffusion.denoisers import exact_denoiser
from diffusion_bias.diffusion.denoisers import memorizing_denoiser
from diffusion_bias.diffusion.denoisers import prior_denoiser
from diffusion_bias.diffusion.denoisers import token_fields
from diffusion_bias.diffusion.process import ddpm_step
from diffusion_bias.diffusion.process import posterior_mean_variance
from diffusion_bias.diffusion.process import predict_eps_from_x0
from diffusion_bias.diffusion.process import predict_x0_from_eps
from diffusion_bias.diffusion.process import q_sample
from diffusion_bias.diffusion.samplers import sample
from diffusion_bias.diffusion.schedules import image_schedule
from diffusion_bias.diffusion.schedules import linear_schedule
from diffusion_bias.diffusion.schedules import respace
from diffusion_bias.diffusion.schedules import Schedule
from diffusion_bias.diffusion.schedules import token_schedule
