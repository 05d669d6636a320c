"""Ray actors of areal_sys: RolloutWorker (vLLM engine) and TrainerWorker (DeepSpeed engine).

Nothing is imported here, so `import workers` stays light; import the worker modules directly.
"""
