// The API's Swagger UI, from the files the fastapi-offline package ships (served under
// /docs/static): no script from elsewhere runs on this origin, where the UI keeps its token.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout",
});
