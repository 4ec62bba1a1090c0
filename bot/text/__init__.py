"""The text layer: the message catalogues (i18n/, Russian and English), escaping
and rendering for Telegram (render), and list views."""
