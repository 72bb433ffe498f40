"""Azure OpenAI fine-tuning: training files, jobs, the fine-tuned model and its evaluation."""
