"""Configuration: the defaults, every rule a config must follow, config.json.

- `default_config`: the defaults every config file starts from, each field explained;
- `config_checks`: every rule (`check_config`, one `ConfigError` naming the field);
- `config_file`: a run's config.json, written at the start and checked on resume.
"""
