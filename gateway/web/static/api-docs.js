// Swagger UI for /api/docs, from the swagger-ui-bundle package (no CDN, no inline script).
window.addEventListener("DOMContentLoaded", function () {
  window.ui = SwaggerUIBundle({url: "/api/openapi.json", dom_id: "#swagger-ui", deepLinking: true});
});
