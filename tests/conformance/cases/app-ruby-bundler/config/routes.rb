Rails.application.routes.draw {}
