"""Events, live updates and notifications: the relay, the hub, the notifier and the mailer."""
